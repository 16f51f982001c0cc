use super::session_args::{install_ctrl_c, output, session, ModelArgs};
use crate::script::{parse_value, Limits, RunContext, Script};
use crate::sweep::{Shard, ShardSource};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (.rhai).
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    /// Define a script variable: a number, true/false, or text (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Run share INDEX of COUNT (0-based, e.g. 2/8) of what the recipe passes through `shard(items)`. Without it,
    /// the share comes from a Slurm array (SLURM_ARRAY_TASK_*) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX
    /// with --shards); sources that disagree are an error.
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<String>,
    /// The number of shards for a Kubernetes Indexed Job's JOB_COMPLETION_INDEX (its `completions`).
    #[arg(long, env = "HYPERLORA_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// Skip items whose output is already there and complete (`pending(path)` is false, `save` keeps the file), and
    /// make broken ones again: for a requeued Slurm task or a restarted pod. Without it an existing output is an
    /// error.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let code =
        crate::files::read_text(&a.recipe).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", a.recipe.display()))?;
    let flag = a.shard.as_deref().map(Shard::parse).transpose()?;
    // HYPERLORA_SHARDS reaches `a.shards` through clap; the resolver reads the rest of the environment
    // clap lets a --shards flag silently win over HYPERLORA_SHARDS: two sources that disagree are named instead
    if let (Ok(env), Some(flag_n)) = (std::env::var("HYPERLORA_SHARDS"), a.shards) {
        if env.trim().parse::<usize>().ok() != Some(flag_n) {
            anyhow::bail!("HYPERLORA_SHARDS={env} and --shards {flag_n} disagree: give one of them");
        }
    }
    let (shard, source) = crate::sweep::shard::resolve(flag, a.shards, &|k| {
        if k == "HYPERLORA_SHARDS" {
            None
        } else {
            std::env::var(k).ok()
        }
    })?;
    if source != ShardSource::None {
        eprintln!("shard {shard} (from {source})");
    }
    let (sess, demo) = session(&a.models)?;
    let mut script = Script::new(sess, output(a.models.preview), Limits::default());
    install_ctrl_c(script.cancel_flag());
    let recipe = a.recipe.file_stem().map(|s| s.to_string_lossy().into_owned());
    script.set_run(RunContext { shard, resume: a.resume, recipe });
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
    let _ = script.eval(&code).map_err(|e| {
        let mut msg = e.located(&a.recipe.display().to_string());
        // a recipe's free variable: say both ways to give it
        if let Some(name) = e.message.strip_prefix("Variable not found: ").map(str::trim) {
            msg += &match name.starts_with("demo_") {
                true => format!(" — `{name}` is defined by --demo (or give it with --set {name}=VALUE)"),
                false => format!(" — define it in the recipe, or give it with --set {name}=VALUE"),
            };
        }
        anyhow::anyhow!(msg)
    })?;
    Ok(())
}
