//! Small ONNX models with antelopev2's I/O signatures, written from code (tract's own protobuf types): the
//! embedded demo's face models and the tests' 2d106 model. Random or constant weights — they exercise the file
//! format, the runners and the pre/post-processing, not face quality.
use crate::error::{Error, Result};
use crate::rng::Rng;
use prost::Message;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// Builds one graph: named initializers and nodes, then `finish` encodes an opset-13 model.
#[derive(Default)]
pub struct OnnxBuilder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    count: usize,
}

/// A node attribute.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

impl OnnxBuilder {
    /// A float initializer; returns its name.
    pub fn weight(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: data,
            ..Default::default()
        });
        name.into()
    }

    pub fn ints(&mut self, name: &str, data: Vec<i64>) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: INT64,
            int64_data: data,
            ..Default::default()
        });
        name.into()
    }

    /// Append a node; returns the name of its (single) output, or `out` when given.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: Option<&str>) -> String {
        self.count += 1;
        let output = out.map(str::to_string).unwrap_or_else(|| format!("{op}_{}", self.count));
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| match a {
                Attr::Int(i) => pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() },
                Attr::Ints(ints) => pb::AttributeProto { name: name.into(), r#type: 7, ints, ..Default::default() },
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.count),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// Conv with a random (or given) weight and bias.
    pub fn conv(
        &mut self,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        rng: &mut Rng,
        bias: f32,
    ) -> String {
        let fan_in = (cin * k * k) as f32;
        let mut w = vec![0f32; cout * cin * k * k];
        rng.fill(&mut w, 0.0, (3.0 / fan_in).sqrt());
        self.conv_with(x, cin, cout, k, stride, pad, w, vec![bias; cout])
    }

    /// A k×k convolution with the given weights [cout, cin, k, k] and biases [cout].
    #[allow(clippy::too_many_arguments)]
    pub fn conv_with(
        &mut self,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        w: Vec<f32>,
        bias: Vec<f32>,
    ) -> String {
        let n = self.count + 1;
        let w = self.weight(&format!("conv{n}.weight"), &[cout as i64, cin as i64, k as i64, k as i64], w);
        let b = self.weight(&format!("conv{n}.bias"), &[cout as i64], bias);
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ],
            None,
        )
    }

    /// Encode the model: one float input named `input.1` with `input_dims` (negative = dynamic), the given outputs.
    pub fn finish(self, input_dims: &[i64], outputs: &[&str]) -> Vec<u8> {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let value_info = |name: &str, dims: &[i64]| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: FLOAT,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .enumerate()
                            .map(|(i, &d)| Dimension {
                                value: Some(if d >= 0 { Value::DimValue(d) } else { Value::DimParam(format!("d{i}")) }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = pb::GraphProto {
            node: self.nodes,
            name: "hyperlora-synthetic".into(),
            initializer: self.inits,
            input: vec![value_info("input.1", input_dims)],
            output: outputs.iter().map(|o| value_info(o, &[])).collect(),
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            producer_name: "hyperlora".into(),
            graph: Some(graph),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// A 2d106-shaped landmark model: input [1, 3, 192, 192] (raw 0–255), output `fc1` [1, 212] =
/// mean(input)·`gain` + `raw` — a fixed face whose points follow the crop (and so the box).
pub fn landmark_106(raw: &[f32], gain: &[f32]) -> Result<Vec<u8>> {
    if raw.len() != 212 || gain.len() != 212 {
        return Err(Error::Mismatch(format!(
            "a 2d106 model has 212 outputs; got {} biases and {} gains",
            raw.len(),
            gain.len()
        )));
    }
    let mut b = OnnxBuilder::default();
    // starts with Sub and Mul, like a graph that normalises its own input, so it is fed raw 0–255 pixels
    let zero = b.weight("data.mean", &[1], vec![0.0]);
    let x = b.node("Sub", &["input.1", &zero], vec![], None);
    let one = b.weight("data.scale", &[1], vec![1.0]);
    let x = b.node("Mul", &[&x, &one], vec![], None);
    let mean = b.node("ReduceMean", &[&x], vec![("axes", Attr::Ints(vec![1, 2, 3])), ("keepdims", Attr::Int(1))], None);
    let flat = b.node("Flatten", &[&mean], vec![("axis", Attr::Int(1))], None);
    let g = b.weight("fc1.gain", &[1, 212], gain.to_vec());
    let scaled = b.node("Mul", &[&flat, &g], vec![], None);
    let bias = b.weight("fc1.bias", &[1, 212], raw.to_vec());
    b.node("Add", &[&scaled, &bias], vec![], Some("fc1"));
    Ok(b.finish(&[1, 3, 192, 192], &["fc1"]))
}

/// A generic face in the 2d106 index layout, in the model's raw output space ([-1, 1] over the 192² crop):
/// jaw 0–32 (chin 0), eye 33–42 (centre 38), brow 43–51, mouth 52–71 (corners 52, 61), nose 72–86 (tip 86),
/// eye 87–96 (centre 88), brow 97–105.
pub fn mean_face_106() -> Vec<f32> {
    let mut p = vec![[0f32; 2]; 106];
    // jaw: chin 0 at the bottom; 1..=16 up the image-left side (1 = top), 17..=32 up the image-right side
    let jaw = |t: f32, side: f32| {
        [
            side * 0.52 * (t * std::f32::consts::FRAC_PI_2).sin(),
            0.55 - 0.75 * (1.0 - (t * std::f32::consts::FRAC_PI_2).cos()),
        ]
    };
    p[0] = [0.0, 0.55];
    let left: Vec<usize> = [1, 9, 10, 11, 12, 13, 14, 15, 16, 2, 3, 4, 5, 6, 7, 8].to_vec();
    let right: Vec<usize> = [17, 25, 26, 27, 28, 29, 30, 31, 32, 18, 19, 20, 21, 22, 23, 24].to_vec();
    for (k, (&l, &r)) in left.iter().zip(&right).enumerate() {
        let t = 1.0 - k as f32 / 16.0; // 1 at the top (temple), → 0 towards the chin
        p[l] = jaw(t, -1.0);
        p[r] = jaw(t, 1.0);
    }
    let ring = |c: [f32; 2], rx: f32, ry: f32, idx: &[usize], p: &mut Vec<[f32; 2]>| {
        for (k, &i) in idx.iter().enumerate() {
            let a = k as f32 / idx.len() as f32 * std::f32::consts::TAU;
            p[i] = [c[0] + rx * a.cos(), c[1] + ry * a.sin()];
        }
    };
    ring([-0.2, -0.12], 0.09, 0.04, &[33, 34, 35, 36, 37, 39, 40, 41, 42], &mut p);
    p[38] = [-0.2, -0.12];
    ring([0.2, -0.12], 0.09, 0.04, &[87, 89, 90, 91, 92, 93, 94, 95, 96], &mut p);
    p[88] = [0.2, -0.12];
    for (k, i) in (43..=51).enumerate() {
        p[i] = [-0.36 + 0.3 * k as f32 / 8.0, -0.24 - 0.04 * (1.0 - ((k as f32 - 4.0) / 4.0).powi(2))];
    }
    for (k, i) in (97..=105).enumerate() {
        p[i] = [0.06 + 0.3 * k as f32 / 8.0, -0.24 - 0.04 * (1.0 - ((k as f32 - 4.0) / 4.0).powi(2))];
    }
    let mouth: Vec<usize> = (53..=60).chain(62..=71).collect();
    ring([0.0, 0.3], 0.16, 0.05, &mouth, &mut p);
    p[52] = [-0.17, 0.3];
    p[61] = [0.17, 0.3];
    for (k, i) in (72..=85).enumerate() {
        p[i] = [0.07 * ((k % 2) as f32 * 2.0 - 1.0) * (k as f32 / 14.0), -0.1 + 0.22 * k as f32 / 14.0];
    }
    p[86] = [0.0, 0.12];
    p.into_iter().flatten().collect()
}

/// A small SCRFD-shaped detector: input [1, 3, H, W] (dynamic), 9 outputs `score_8 … kps_32` ([anchors, 1|4|10])
/// from one strided conv per head, random weights. `score_bias` sets how eagerly it "detects".
pub fn scrfd(seed: u64, score_bias: f32) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut b = OnnxBuilder::default();
    let mut names = Vec::new();
    for (kind, width) in [("score", 1usize), ("bbox", 4), ("kps", 10)] {
        for s in [8usize, 16, 32] {
            let bias = if kind == "score" { score_bias } else { 0.5 };
            let c = b.conv("input.1", 3, 2 * width, s, s, 0, &mut rng, bias);
            let c = if kind == "score" { b.node("Sigmoid", &[&c], vec![], None) } else { c };
            let t = b.node("Transpose", &[&c], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))], None);
            let shape = b.ints(&format!("{kind}_{s}.shape"), vec![-1, width as i64]);
            let name = format!("{kind}_{s}");
            b.node("Reshape", &[&t, &shape], vec![], Some(&name));
            names.push(name);
        }
    }
    let outs: Vec<&str> = names.iter().map(String::as_str).collect();
    b.finish(&[1, 3, -1, -1], &outs)
}

/// A SCRFD-shaped detector with crafted weights that finds a face by its skin colour, so that the demo's default
/// detection path (SCRFD at 640 → landmarks → cutout → ArcFace re-detection on the 3× crop) runs on the demo photo
/// without a box. Only stride 32 scores: per anchor, over the 64×64 window centred on its cell of the
/// (RGB − 127.5)/128 input, the means of three
/// colour features in pixel units — R − G − 33, G − B − 23 and (R − 210)/3, all near 0 on the astronaut's face and
/// far from it on the flag, the suit and the background — are squared and summed (d²), and the score is
/// sigmoid(0.1·(50 − d²)), above 0.5 where d² < 50. Boxes are a constant 128 px square on the cell's centre, the five
/// keypoints a constant frontal layout inside it. Strides 8 and 16 score 0.
pub fn skin_scrfd() -> Vec<u8> {
    let mut b = OnnxBuilder::default();
    let mut names = Vec::new();
    let mut heads = Vec::new();
    for s in [8usize, 16, 32] {
        let score = if s == 32 {
            // a 64×64 window per anchor (stride 32, padding 16): a face-sized area, so that small patches of
            // skin-like colour in noise do not score
            let (k, n) = (2 * s, (4 * s * s) as f32);
            let mut w = vec![0f32; 3 * 3 * k * k];
            let mut set = |o: usize, c: usize, v: f32| w[(o * 3 + c) * k * k..(o * 3 + c + 1) * k * k].fill(v);
            // pixel = 128·x + 127.5, so a difference of two channels is 128·(x_a − x_b)
            set(0, 0, 128.0 / n);
            set(0, 1, -128.0 / n);
            set(1, 1, 128.0 / n);
            set(1, 2, -128.0 / n);
            set(2, 0, 128.0 / (3.0 * n));
            let f = b.conv_with("input.1", 3, 3, k, s, s / 2, w, vec![-33.0, -23.0, (127.5 - 210.0) / 3.0]);
            let sq = b.node("Mul", &[&f, &f], vec![], None);
            b.conv_with(&sq, 3, 2, 1, 1, 0, vec![-0.1; 6], vec![5.0; 2])
        } else {
            b.conv_with("input.1", 3, 2, s, s, 0, vec![0.0; 2 * 3 * s * s], vec![-30.0; 2])
        };
        let score = b.node("Sigmoid", &[&score], vec![], None);
        // distances from the anchor (the cell's top-left corner) in strides: a 128 px box on the cell's centre
        let half = 64.0 / s as f32;
        let (near, far) = (half - 0.5, half + 0.5);
        let bbox = b.conv_with("input.1", 3, 8, s, s, 0, vec![0.0; 8 * 3 * s * s], [near, near, far, far].repeat(2));
        let layout = [(-0.35f32, -0.2f32), (0.35, -0.2), (0.0, 0.1), (-0.3, 0.45), (0.3, 0.45)];
        let kps: Vec<f32> = layout.iter().flat_map(|(x, y)| [0.5 + x * 2.0 * half, 0.5 + y * 2.0 * half]).collect();
        let kps = b.conv_with("input.1", 3, 20, s, s, 0, vec![0.0; 20 * 3 * s * s], kps.repeat(2));
        heads.push((s, [("score", score, 1usize), ("bbox", bbox, 4), ("kps", kps, 10)]));
    }
    for kind in 0..3 {
        for (s, h) in &heads {
            let (name, c, width) = &h[kind];
            let t = b.node("Transpose", &[c], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))], None);
            let shape = b.ints(&format!("{name}_{s}.shape"), vec![-1, *width as i64]);
            let out = format!("{name}_{s}");
            b.node("Reshape", &[&t, &shape], vec![], Some(&out));
            names.push(out);
        }
    }
    let outs: Vec<&str> = names.iter().map(String::as_str).collect();
    b.finish(&[1, 3, -1, -1], &outs)
}

/// A small ArcFace-shaped recognizer: input [1, 3, 112, 112] normalised by the caller ((x − 127.5)/127.5, as
/// insightface decides for a graph that does not start with Sub/Mul), output `embedding` [1, 512].
pub fn arcface(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut b = OnnxBuilder::default();
    let c = b.conv("input.1", 3, 16, 8, 8, 0, &mut rng, 0.0); // [1,16,14,14]
    let c = b.node("Relu", &[&c], vec![], None);
    let c = b.conv(&c, 16, 32, 2, 2, 0, &mut rng, 0.0); // [1,32,7,7]
    let f = b.node("Flatten", &[&c], vec![("axis", Attr::Int(1))], None);
    let mut w = vec![0f32; 512 * 32 * 49];
    rng.fill(&mut w, 0.0, (3.0f32 / (32.0 * 49.0)).sqrt());
    let w = b.weight("fc.weight", &[512, 32 * 49], w);
    let bias = b.weight("fc.bias", &[512], vec![0.0; 512]);
    b.node("Gemm", &[&f, &w, &bias], vec![("transB", Attr::Int(1))], Some("embedding"));
    b.finish(&[1, 3, 112, 112], &["embedding"])
}

/// Real-size stand-ins for the benchmark: random weights, the real input/output signatures, and about the
/// real networks' compute. `macs` counts the convolutions' and matmuls' multiply-accumulates at the bench size.
pub struct StandIn {
    pub onnx: Vec<u8>,
    pub macs: u64,
    pub what: &'static str,
}

struct Net {
    b: OnnxBuilder,
    rng: Rng,
    macs: u64,
}

impl Net {
    fn new(seed: u64) -> Self {
        Net { b: OnnxBuilder::default(), rng: Rng::new(seed), macs: 0 }
    }
    /// conv k×k (pad k/2) + optional ReLU on an input of side `hw`; returns the output and its side.
    fn conv(
        &mut self,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        hw: usize,
        relu: bool,
    ) -> (String, usize) {
        let out_hw = (hw + 2 * (k / 2) - k) / stride + 1;
        self.macs += (out_hw * out_hw * cout * cin * k * k) as u64;
        let c = self.b.conv(x, cin, cout, k, stride, k / 2, &mut self.rng, 0.0);
        let c = if relu { self.b.node("Relu", &[&c], vec![], None) } else { c };
        (c, out_hw)
    }
    fn gemm(&mut self, x: &str, fin: usize, fout: usize, out: Option<&str>) -> String {
        self.macs += (fin * fout) as u64;
        let mut w = vec![0f32; fin * fout];
        self.rng.fill(&mut w, 0.0, (3.0 / fin as f32).sqrt());
        let n = self.b.count + 1;
        let w = self.b.weight(&format!("fc{n}.weight"), &[fout as i64, fin as i64], w);
        let bias = self.b.weight(&format!("fc{n}.bias"), &[fout as i64], vec![0.0; fout]);
        self.b.node("Gemm", &[x, &w, &bias], vec![("transB", Attr::Int(1))], out)
    }
}

/// IResNet-100 as in glintr100.onnx (BN folded into the convs, PReLU as ReLU): 3×3 stem, stages of
/// [3, 13, 30, 3] basic blocks at 64/128/256/512 channels, each stage halving the side, 512·7·7 → 512.
pub fn iresnet100(seed: u64) -> StandIn {
    let mut n = Net::new(seed);
    let (mut x, mut hw) = n.conv("input.1", 3, 64, 3, 1, 112, true);
    let mut cin = 64;
    for (blocks, c) in [(3, 64), (13, 128), (30, 256), (3, 512)] {
        for i in 0..blocks {
            let stride = if i == 0 { 2 } else { 1 };
            let (a, _) = n.conv(&x, cin, c, 3, 1, hw, true);
            let (b, out_hw) = n.conv(&a, c, c, 3, stride, hw, false);
            let short = if i == 0 { n.conv(&x, cin, c, 1, 2, hw, false).0 } else { x.clone() };
            x = n.b.node("Add", &[&b, &short], vec![], None);
            hw = out_hw;
            cin = c;
        }
    }
    let f = n.b.node("Flatten", &[&x], vec![("axis", Attr::Int(1))], None);
    n.gemm(&f, 512 * hw * hw, 512, Some("embedding"));
    let macs = n.macs;
    StandIn { onnx: n.b.finish(&[1, 3, 112, 112], &["embedding"]), macs, what: "IResNet-100 layout (glintr100)" }
}

/// A SCRFD-shaped detector of about scrfd_10g_bnkps's compute: a strided conv backbone with features at strides
/// 8/16/32 and the 9 SCRFD heads. Dynamic input; `macs` at 640².
pub fn scrfd_standin(seed: u64) -> StandIn {
    let mut n = Net::new(seed);
    let (x, hw) = n.conv("input.1", 3, 32, 3, 2, 640, true);
    let (x, hw) = n.conv(&x, 32, 64, 3, 2, hw, true);
    let (x, hw) = n.conv(&x, 64, 64, 3, 1, hw, true);
    let (x, hw) = n.conv(&x, 64, 128, 3, 2, hw, true);
    let (s8, hw8) = n.conv(&x, 128, 128, 3, 1, hw, true);
    let (x, hw) = n.conv(&s8, 128, 256, 3, 2, hw8, true);
    let (s16, hw16) = n.conv(&x, 256, 256, 3, 1, hw, true);
    let (x, hw) = n.conv(&s16, 256, 256, 3, 2, hw16, true);
    let (s32, hw32) = n.conv(&x, 256, 256, 3, 1, hw, true);
    let mut names = Vec::new();
    let feats = [(8, s8, hw8, 128), (16, s16, hw16, 256), (32, s32, hw32, 256)];
    let mut heads = Vec::new();
    for (s, f, hw, c) in &feats {
        let (h, _) = n.conv(f, *c, 64, 3, 1, *hw, true);
        heads.push((*s, h, *hw));
    }
    for (kind, width) in [("score", 1usize), ("bbox", 4), ("kps", 10)] {
        for (s, h, hw) in &heads {
            let (c, _) = n.conv(h, 64, 2 * width, 1, 1, *hw, false);
            // scores biased low so that, as with a real detector on a photo, few anchors pass 0.5 (NMS stays cheap)
            let c = if kind == "score" {
                let bias = n.b.weight(&format!("score_{s}.offset"), &[1], vec![-8.0]);
                let c = n.b.node("Add", &[&c, &bias], vec![], None);
                n.b.node("Sigmoid", &[&c], vec![], None)
            } else {
                c
            };
            let t = n.b.node("Transpose", &[&c], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))], None);
            let shape = n.b.ints(&format!("{kind}_{s}.shape"), vec![-1, width as i64]);
            let name = format!("{kind}_{s}");
            n.b.node("Reshape", &[&t, &shape], vec![], Some(&name));
            names.push(name);
        }
    }
    let outs: Vec<&str> = names.iter().map(String::as_str).collect();
    let macs = n.macs;
    StandIn { onnx: n.b.finish(&[1, 3, -1, -1], &outs), macs, what: "strided-conv detector with SCRFD's 9 heads" }
}

/// A 2d106-shaped landmark regressor of about 2d106det's compute: five stride-2 convs and a 212-wide Gemm.
pub fn landmark_standin(seed: u64) -> StandIn {
    let mut n = Net::new(seed);
    let zero = n.b.weight("data.mean", &[1], vec![0.0]);
    let x = n.b.node("Sub", &["input.1", &zero], vec![], None);
    let one = n.b.weight("data.scale", &[1], vec![1.0 / 255.0]);
    let mut x = n.b.node("Mul", &[&x, &one], vec![], None);
    let (mut hw, mut cin) = (192, 3);
    for c in [32, 64, 128, 128, 256] {
        let (y, h) = n.conv(&x, cin, c, 3, 2, hw, true);
        let (y, h) = n.conv(&y, c, c, 3, 1, h, true);
        x = y;
        hw = h;
        cin = c;
    }
    let f = n.b.node("Flatten", &[&x], vec![("axis", Attr::Int(1))], None);
    n.gemm(&f, cin * hw * hw, 212, Some("fc1"));
    let macs = n.macs;
    StandIn { onnx: n.b.finish(&[1, 3, 192, 192], &["fc1"]), macs, what: "strided-conv landmark regressor" }
}
