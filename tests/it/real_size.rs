//! The released configuration at full size (spec §2.1, §2.4, §2.6): random f16 weights written by the test in
//! the release layout (no config.json), loaded through the real loader, one forward, one LoRA.
use candle_core::DType;
use hyperlora::hyper::config::HyperConfig;
use hyperlora::hyper::synth::Branch;
use hyperlora::hyper::{modules, HyperLora, LoadOptions};
use hyperlora::lora::file::export_kohya;
use hyperlora::synthetic::hyper as synthetic;
use hyperlora::weights::StFile;

#[test]
fn release_shapes_load_forward_and_synthesize() {
    let tmp = tempfile::tempdir().unwrap();
    // the 3 GB variant is written once per machine: its key is everything the writer's output depends on
    let (cfg, mods) = (HyperConfig::release(140), modules::sdxl_release_modules());
    let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    // (the writer's and the generator's source are part of the key: changing either writes the files anew)
    let writer = [include_str!("../../src/synthetic/hyper.rs"), include_str!("../../src/rng.rs")].concat();
    let key = format!(
        "real-size variant, seed 3, {cfg:?} {names:?}, writer {}",
        hyperlora::files::provenance::sha256_hex(writer.as_bytes())
    );
    let cached = crate::common::cached_dir(&key, |d| {
        synthetic::write_variant(&d.join("sdxl_hyper_id_lora_v1_fidelity"), &cfg, &mods, 3, false).unwrap()
    });
    let dir = cached.join("sdxl_hyper_id_lora_v1_fidelity");

    // the file sizes the spec publishes (§2.6): params × 2 bytes + header
    let size = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
    assert!(
        size("hyper_lora_modules.safetensors") > 2_972_712_960
            && size("hyper_lora_modules.safetensors") < 2_972_712_960 + 300_000
    );
    assert!(size("resampler.safetensors") > 149_500_160 && size("resampler.safetensors") < 149_500_160 + 20_000);
    assert!(size("id_projector.safetensors") > 16_814_080 && size("id_projector.safetensors") < 16_814_080 + 1_000);

    let h = HyperLora::load(&dir, &LoadOptions::default()).unwrap();
    let c = h.config();
    assert_eq!(c, &HyperConfig::release(140), "derived configuration differs from spec §2.1");
    assert_eq!(h.variant().label, "sdxl_hyper_id_lora_v1_fidelity");

    let feats = synthetic::random_features(1, 512, 257, 1024, 5).unwrap();
    let id = h.identity(&feats).unwrap();
    assert_eq!(id.dims(), (1120, 128));
    let coeffs = id.coefficients().unwrap();
    let norms = coeffs.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1::<f32>().unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "coefficient tokens are not unit vectors");

    let w = h.synthesize(&id, Branch::Id).unwrap();
    assert_eq!(w.layers.len(), 560);
    assert_eq!(w.num_params(), 11_612_160);
    let l = w.layers.iter().find(|l| l.target == "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k").unwrap();
    assert_eq!((l.down.dims(), l.up.dims()), (&[8, 2048][..], &[1280, 8][..]));
    let all_finite = w.layers.iter().all(|l| l.down.sum_all().unwrap().to_scalar::<f32>().unwrap().is_finite());
    assert!(all_finite);

    let out = tmp.path().join("lora.safetensors");
    let s = export_kohya(&w, hyperlora::hyper::ALPHA_RATIO, &out, DType::F16, Default::default(), false).unwrap();
    assert_eq!(s.tensors, 1680);
    let f = StFile::open(&out).unwrap();
    assert_eq!(f.keys().len(), 1680);
    let alpha = f.to_f32_vec("lora_unet_mid_block_attentions_0_transformer_blocks_9_attn2_to_out_0.alpha").unwrap();
    assert_eq!(alpha, vec![4.0]);
    // ≈ 23.2 MB in fp16 (spec §5.1)
    assert!((23_000_000..23_500_000).contains(&s.bytes), "{} bytes", s.bytes);
}

/// `doctor` builds the models on headers alone (`weights::headers_only`): one-element stand-ins of every shape. At
/// SDXL base's real shapes the UNet, VAE and both text encoders build on them without materialising a weight (they
/// would need about 10 GB in f32; the build stays under 300 MB of new resident memory).
#[test]
fn sdxl_base_builds_on_header_stand_ins_without_holding_weights() {
    use candle_core::{Device, Shape, Tensor};
    // the peak is per process and other tests run beside this one: measured in a child running this test alone
    if std::env::var_os("HYPERLORA_STAND_IN_CHILD").is_none() {
        let name = "real_size::sdxl_base_builds_on_header_stand_ins_without_holding_weights";
        let o = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads", "1"])
            .env("HYPERLORA_STAND_IN_CHILD", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("1 passed"), "{out}{}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    struct StandIns;
    impl candle_nn::var_builder::SimpleBackend for StandIns {
        fn get(&self, s: Shape, _: &str, _: candle_nn::Init, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            Tensor::zeros((), d, dev)?.broadcast_as(s)
        }
        fn get_unchecked(&self, n: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("no shape for {n}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }
    let hwm = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let before = hwm();
    let vb = || candle_nn::VarBuilder::from_backend(Box::new(StandIns), DType::F32, Device::Cpu);
    let m = hyperlora::sdxl::model::sdxl_base_unet_config();
    let unet = hyperlora::sdxl::unet::UNet::new(&m, vb()).unwrap();
    let vae = hyperlora::sdxl::vae::Vae::new(&hyperlora::sdxl::model::sdxl_base_vae_config(), vb()).unwrap();
    let (t1, t2) = hyperlora::sdxl::model::sdxl_base_text_configs();
    let te1 = hyperlora::sdxl::text::ClipTextModel::new(&t1, vb(), false).unwrap();
    let te2 = hyperlora::sdxl::text::ClipTextModel::new(&t2, vb(), true).unwrap();
    let grown = hwm().saturating_sub(before);
    drop((unet, vae, te1, te2));
    assert!(grown < 300 << 20, "building on stand-ins raised the peak by {} MB", grown >> 20);
}
