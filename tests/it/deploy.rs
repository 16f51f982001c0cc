//! The shipped deployment examples, checked with parsers from the registry (no docker daemon, kubectl or Slurm
//! here): the Kubernetes Indexed Job parses as YAML and its container arguments parse as a `hyperlora` command
//! line; the Dockerfile parses and has the promised shape; the Slurm batch script passes `bash -n` and runs, as
//! an array task would, through the real binary on the demo set.
use super::common::demo_dir;
use clap::Parser;
use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr};
use hyperlora::sweep::shard::{resolve, Shard};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn exec_or_shell(e: &ShellOrExecExpr) -> Vec<String> {
    match e {
        ShellOrExecExpr::Exec(a) => a.elements.iter().map(|s| s.content.clone()).collect(),
        ShellOrExecExpr::Shell(s) => s.to_string().split_whitespace().map(str::to_string).collect(),
    }
}

#[test]
fn kubernetes_indexed_job_is_valid_and_its_shards_cover_the_sweep() {
    let text = std::fs::read_to_string(repo("examples/k8s/indexed-job.yaml")).unwrap();
    let y: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(y["apiVersion"], "batch/v1");
    assert_eq!(y["kind"], "Job");
    let spec = &y["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap() as usize;
    let parallelism = spec["parallelism"].as_u64().unwrap() as usize;
    assert!(parallelism >= 1 && parallelism <= completions);
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never", "Indexed Jobs restart per index");
    let containers = spec["template"]["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"].as_u64(), Some(1), "a GPU limit");

    // the arguments are a `hyperlora run` command line with --resume, and the recipe is one the image ships
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let cli = hyperlora::cli::Cli::try_parse_from(std::iter::once("hyperlora".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the Job's args are not a valid command line: {e}"));
    assert!(matches!(cli.cmd, Some(hyperlora::cli::Cmd::Run(_))));
    assert!(args.contains(&"--resume".to_string()), "a restarted pod continues");
    let recipe = args[1].strip_prefix("/opt/hyperlora/").expect("a recipe the image ships under /opt/hyperlora");
    assert!(repo(recipe).is_file(), "{recipe} is not in the repository");

    // HYPERLORA_SHARDS is the Job's completions: every index gets its own share
    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("HYPERLORA_SHARDS").unwrap().parse::<usize>().unwrap(), completions);
    let mut seen = vec![0; 100];
    for i in 0..completions {
        let (s, _) = resolve(None, None, &|k| match k {
            "JOB_COMPLETION_INDEX" => Some(i.to_string()),
            _ => get(k),
        })
        .unwrap();
        assert_eq!(s, Shard::new(i, completions).unwrap());
        for k in s.positions(seen.len()) {
            seen[k] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1));
    assert!(get("HYPERLORA_DEVICE").is_some_and(|d| d.starts_with("cuda")));
    assert!(matches!(get("HYPERLORA_DTYPE").as_deref(), Some("f16" | "bf16" | "f32")));

    // models on a read-only volume, mounted read-only where HYPERLORA_COMFYUI points
    let models = get("HYPERLORA_COMFYUI").unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let m =
        mounts.iter().find(|m| m["mountPath"].as_str() == Some(models.as_str())).expect("a volume at the models path");
    assert_eq!(m["readOnly"], true);
    let volumes = spec["template"]["spec"]["volumes"].as_sequence().unwrap();
    let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
    assert_eq!(v["persistentVolumeClaim"]["readOnly"], true);
    let out = args.iter().find_map(|a| a.strip_prefix("out=")).unwrap();
    assert!(
        mounts.iter().any(|m| out.starts_with(m["mountPath"].as_str().unwrap()) && m["readOnly"] != true),
        "the output folder {out} is on a writable volume"
    );
}

#[test]
fn dockerfile_builds_with_cuda_on_devel_and_runs_on_runtime() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let d = Dockerfile::parse(&text).unwrap_or_else(|e| panic!("Dockerfile: {e}"));
    let stages = d.stages();
    assert_eq!(stages.stages.len(), 2, "multi-stage: build and runtime");
    let image = |i: usize| -> String {
        let from = stages.stages[i].instructions.iter().find_map(|x| x.as_from()).unwrap();
        let r = from.image_parsed.resolve_vars(&d).expect("image variables resolve to the ARG defaults");
        format!("{}:{}", r.image, r.tag.unwrap_or_default())
    };
    let (build, run) = (image(0), image(1));
    assert!(build.starts_with("nvidia/cuda:") && build.contains("-devel-"), "{build}");
    assert!(run.starts_with("nvidia/cuda:") && run.contains("-runtime-"), "{run}");
    assert_eq!(build.replace("-devel-", "-"), run.replace("-runtime-", "-"), "the same CUDA version and OS");

    let runs: Vec<String> = stages.stages[0]
        .instructions
        .iter()
        .filter_map(|x| x.as_run())
        .map(|r| exec_or_shell(&r.expr).join(" "))
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("cargo build") && r.contains("--release") && r.contains("--features cuda")),
        "{runs:?}"
    );
    // nothing model-like is copied in; the runtime stage copies the binary and the recipes only
    for x in &d.instructions {
        if let Instruction::Copy(c) = x {
            for s in &c.sources {
                let s = s.content.to_lowercase();
                assert!(!s.contains("model") && !s.ends_with(".safetensors") && !s.ends_with(".onnx"), "{s}");
            }
        }
    }
    let last = &stages.stages[1].instructions;
    let copies: Vec<&dockerfile_parser::CopyInstruction> = last.iter().filter_map(|x| x.as_copy()).collect();
    assert!(copies
        .iter()
        .any(|c| c.flags.iter().any(|f| f.value.content == "build") && c.sources[0].content.ends_with("/hyperlora")));
    assert!(copies
        .iter()
        .any(|c| c.sources[0].content == "scripts" && c.destination.content == "/opt/hyperlora/scripts"));
    let entry = last.iter().find_map(|x| x.as_entrypoint()).map(|e| exec_or_shell(&e.expr)).unwrap();
    assert_eq!(entry, ["hyperlora"]);
    // the default command is the demo, which needs no mounted models, and it parses as our command line
    let cmd = last.iter().find_map(|x| x.as_cmd()).map(|e| exec_or_shell(&e.expr)).unwrap();
    assert_eq!(cmd[0], "demo");
    hyperlora::cli::Cli::try_parse_from(std::iter::once("hyperlora".to_string()).chain(cmd)).unwrap();
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"), "the build context leaves target/ out");
}

#[test]
fn slurm_array_script_runs_as_an_array_task() {
    let script = repo("examples/slurm/sweep.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    let o = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(o.status.success(), "bash -n: {}", String::from_utf8_lossy(&o.stderr));
    let sbatch: Vec<&str> = text.lines().filter(|l| l.starts_with("#SBATCH")).collect();
    assert!(sbatch.iter().any(|l| l.starts_with("#SBATCH --array=")), "{sbatch:?}");
    assert!(sbatch.iter().any(|l| l.starts_with("#SBATCH --gres=gpu")), "{sbatch:?}");

    // run it as task 1 of a 3-task array: a stand-in `module` command on PATH, the real binary, the demo set
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let module = bin.join("module");
    std::fs::write(&module, format!("#!/bin/sh\necho \"$@\" >> {}\n", tmp.path().join("modules").display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.path().join("out");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(tmp.path())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("HYPERLORA", env!("CARGO_BIN_EXE_hyperlora"))
        .env("RECIPE", repo("scripts/sweep.rhai"))
        .env("OUT", &out)
        .env("HYPERLORA_EXTRA", "--demo --set size=64 --set steps=2")
        .env("HYPERLORA_DEMO_DIR", demo_dir())
        .env("SLURM_ARRAY_JOB_ID", "77")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "0")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("HYPERLORA_SHARDS")
        .env_remove("PHOTOS")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{all}");
    assert!(all.contains("shard 1/3 (from the Slurm array") && all.contains("shard 1/3: 4 of 12 images"), "{all}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("modules")).unwrap().trim(), "load cuda/13.0");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
}
