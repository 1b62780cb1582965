//! `difforge explain`.

use crate::cli::{ExplainArgs, ExplainView};
use difforge_core::ConfigError;
use difforge_explain::report;
use difforge_explain::Subject;
use difforge_model::{checkpoint, Condition};
use serde_json::{json, Value};

fn parse_pixel(s: Option<&str>, side: i64) -> Result<(i64, i64), ConfigError> {
    let Some(s) = s else { return Ok((side / 2, side / 2)) };
    let bad = || ConfigError::new("--pixel", s, format!("X,Y with 0 <= X, Y < {side}"));
    let (x, y) = s.split_once(',').ok_or_else(bad)?;
    let (x, y): (i64, i64) = (x.trim().parse().map_err(|_| bad())?, y.trim().parse().map_err(|_| bad())?);
    if !(0..side).contains(&x) || !(0..side).contains(&y) {
        return Err(bad());
    }
    Ok((x, y))
}

/// The step a checkpoint was written at (0 when its state cannot be read).
fn step_of(dir: &std::path::Path) -> u64 {
    checkpoint::read_state(dir).map(|s| s.step).unwrap_or(0)
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let (model, sampler, dir) = super::sample::load(&args.sampling)?;
    // As generation applies them: a latent model never clamps its predicted clean latents.
    let sampler = difforge_model::generate::sampler_for(&model, &sampler);
    let condition = args.class.map_or(Condition::Unconditional, Condition::Class);
    model.family().condition_kind().check("--class", &condition)?;
    if !(1..=64).contains(&args.n) {
        return Err(ConfigError::new("--n", args.n, "1..=64").into());
    }
    let pixel = parse_pixel(args.pixel.as_deref(), model.family().pixel_shape()[1])?;
    std::fs::create_dir_all(&args.out)?;
    let seeds: Vec<u64> = (0..args.n as u64).map(|i| args.sampling.seed + i).collect();
    let subject = Subject { model: &model, sampler: &sampler, condition, seeds };
    let out = &args.out;
    let timesteps = || -> anyhow::Result<Value> {
        let mut models = vec![("checkpoint", &model, step_of(&dir))];
        let other;
        if let Some(path) = &args.compare {
            let odir = checkpoint::resolve(path)?;
            let ocfg = checkpoint::read_config(&odir)?;
            other = checkpoint::load_model(&odir, &ocfg, model.device())?;
            models.push(("compared", &other, step_of(&odir)));
        }
        Ok(report::write_timesteps(&models, out)?)
    };
    let result = match args.what {
        ExplainView::Trajectory => json!({ "trajectory": report::write_trajectory(&subject, out, args.show)? }),
        ExplainView::Timesteps => json!({ "timesteps": timesteps()? }),
        ExplainView::Attribution => json!({ "attribution": report::write_attribution(&subject, out)? }),
        ExplainView::Attention => json!({ "attention": report::write_attention(&subject, out, pixel, args.show)? }),
        ExplainView::Neighbours => json!({ "neighbours": report::write_neighbours(&subject, out, args.k)? }),
        ExplainView::Report => {
            let mut v = json!({
                "trajectory": report::write_trajectory(&subject, out, args.show)?,
                "timesteps": timesteps()?,
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
