//! `difforge explain`.

use crate::cli::{ExplainArgs, ExplainView};
use difforge_explain::report;
use difforge_explain::Subject;
use difforge_train::checkpoint;
use serde_json::{json, Value};

fn parse_pixel(s: Option<&str>, side: i64) -> anyhow::Result<(i64, i64)> {
    let Some(s) = s else { return Ok((side / 2, side / 2)) };
    let bad = || anyhow::anyhow!("--pixel {s}: expected X,Y with 0 <= X, Y < {side}");
    let (x, y) = s.split_once(',').ok_or_else(bad)?;
    let (x, y): (i64, i64) = (x.trim().parse().map_err(|_| bad())?, y.trim().parse().map_err(|_| bad())?);
    if !(0..side).contains(&x) || !(0..side).contains(&y) {
        return Err(bad());
    }
    Ok((x, y))
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let (model, sampler, dir) = super::sample::load(&args.sampling)?;
    let k = model.config.model.num_classes;
    if let Some(c) = args.class {
        if k == 0 || !(0..k).contains(&c) {
            anyhow::bail!("--class {c}: expected 0..={} (the model has {k} classes)", k.max(1) - 1);
        }
    }
    if args.n == 0 || args.n > 64 {
        anyhow::bail!("--n {}: expected 1..=64", args.n);
    }
    let pixel = parse_pixel(args.pixel.as_deref(), model.config.model.image_size)?;
    std::fs::create_dir_all(&args.out)?;
    let seeds: Vec<u64> = (0..args.n as u64).map(|i| args.sampling.seed + i).collect();
    let subject = Subject { model: &model, sampler: &sampler, class: args.class, seeds };
    let step = checkpoint::read_state(&dir).map(|s| s.step).unwrap_or(0);
    let out = &args.out;
    let timesteps = |_: ()| -> anyhow::Result<Value> {
        let mut models = vec![("checkpoint", &model, step)];
        let other;
        if let Some(path) = &args.compare {
            let odir = checkpoint::resolve(path)?;
            let ocfg = checkpoint::read_config(&odir)?;
            other = checkpoint::load_model(&odir, &ocfg, model.device)?;
            models.push(("compared", &other, checkpoint::read_state(&odir).map(|s| s.step).unwrap_or(0)));
            return Ok(report::write_timesteps(&models, out)?);
        }
        Ok(report::write_timesteps(&models, out)?)
    };
    let result = match args.what {
        ExplainView::Trajectory => json!({ "trajectory": report::write_trajectory(&subject, out, args.show)? }),
        ExplainView::Timesteps => json!({ "timesteps": timesteps(())? }),
        ExplainView::Attribution => json!({ "attribution": report::write_attribution(&subject, out)? }),
        ExplainView::Attention => json!({ "attention": report::write_attention(&subject, out, pixel, args.show)? }),
        ExplainView::Neighbours => json!({ "neighbours": report::write_neighbours(&subject, out, args.k)? }),
        ExplainView::Report => {
            let mut v = json!({
                "trajectory": report::write_trajectory(&subject, out, args.show)?,
                "timesteps": timesteps(())?,
                "attribution": report::write_attribution(&subject, out)?,
                "attention": report::write_attention(&subject, out, pixel, args.show)?,
                "neighbours": report::write_neighbours(&subject, out, args.k)?,
            });
            let title = format!("difforge explain: {}", dir.display());
            let page = report::write_html(out, &title, &v)?;
            v["report"] = json!(page);
            v
        }
    };
    if args.json {
        return super::print_json(&result);
    }
    let mut files: Vec<String> = std::fs::read_dir(out)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    println!("{}: {}", out.display(), files.join(", "));
    Ok(())
}
