use super::session_args::{install_ctrl_c, output, session, ModelArgs};
use crate::script::{parse_value, Limits, Script};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (.rhai).
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    /// Define a script variable: a number, true/false, or text (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let code =
        std::fs::read_to_string(&a.recipe).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", a.recipe.display()))?;
    let (sess, demo) = session(&a.models)?;
    let mut script = Script::new(sess, output(a.models.preview), Limits::default());
    install_ctrl_c(script.cancel_flag());
    if let Some(d) = &demo {
        crate::front::args::define_demo(&mut script, d);
    }
    for kv in &a.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {kv}: expected NAME=VALUE"))?;
        if k.is_empty()
            || !k.chars().all(|c| c.is_alphanumeric() || c == '_')
            || k.starts_with(|c: char| c.is_ascii_digit())
        {
            anyhow::bail!("--set {kv}: `{k}` is not a valid variable name");
        }
        script.set(k, parse_value(v));
    }
    let _ = script.eval(&code).map_err(|e| anyhow::anyhow!(e.located(&a.recipe.display().to_string())))?;
    Ok(())
}
