//! `difforge bench` (placeholder: being written).

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("difforge bench is not written yet")
}
