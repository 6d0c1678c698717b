//! A BERT encoder's forward pass on the CPU, for sentence embeddings: what the local embedding
//! provider of `ragpipe-llm` (`local.rs`) runs. It has no dependency on the rest of ragpipe.
//!
//! The arithmetic is BERT's (`transformers`' `BertModel` in eval mode): embeddings (word +
//! position + token type 0) and LayerNorm, then per layer self-attention, a residual LayerNorm,
//! the GELU feed-forward and another residual LayerNorm. Three choices make it fast on a CPU
//! without changing the result:
//!
//! - **Sequences are packed, not padded.** Every per-token step (the linear layers, GELU,
//!   LayerNorm) runs on the batch's real tokens as one matrix; only attention is per sequence,
//!   over that sequence's own tokens. Padded positions, which an attention mask would zero out,
//!   are never computed.
//! - **The matrix products are `gemm`'s kernels** (AVX-512 where the CPU has it, else AVX2/FMA,
//!   chosen at run time), with the bias added by the product itself and the three attention
//!   projections fused into one product. Attention reads queries, keys and values in place
//!   through strides, without transposed copies.
//! - **Element-wise work has no library calls in its loops**: `exp` and `erf` are the
//!   single-precision rational and polynomial approximations that XLA and Eigen use (within
//!   a few units in the last place), so the compiler vectorises them.
//!
//! `ragpipe-llm`'s `tests/local_embeddings.rs` holds the output to sentence-transformers'
//! vectors.

use gemm_common::Parallelism;
use rayon::prelude::*;
use std::path::Path;

/// Why a model could not be loaded: what was being read, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct EncoderError {
    /// What was being done, naming the file.
    pub context: String,
    /// The underlying failure.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The parts of a BERT `config.json` the forward pass reads.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    /// Width of every token's state.
    pub hidden_size: usize,
    /// Attention heads per layer (`hidden_size` must divide evenly).
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation: `gelu` (exact, with erf), `gelu_new` /
    /// `gelu_pytorch_tanh` (the tanh approximation) or `relu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm's epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Positions the model has embeddings for: the longest input it can read.
    pub max_position_embeddings: usize,
    /// Word pieces in the vocabulary.
    pub vocab_size: usize,
    /// Only `absolute` is supported.
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

struct Linear {
    /// `(out, in)`, row-major, as PyTorch stores a `Linear`'s weight.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: `(3 × hidden, hidden)`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    hidden: usize,
    heads: usize,
    eps: f32,
    activation: Activation,
    max_positions: usize,
    vocab: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// The weights of a safetensors file, looked up by name (with or without a `bert.` prefix).
struct Weights<'a> {
    file: safetensors::SafeTensors<'a>,
    path: &'a Path,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EncoderError> {
        let fail = |message: String| EncoderError {
            context: format!("reading tensor {name} of {}", self.path.display()),
            source: message.into(),
        };
        let view = self
            .file
            .tensor(name)
            .or_else(|_| self.file.tensor(&format!("bert.{name}")))
            .map_err(|e| fail(e.to_string()))?;
        if view.shape() != shape {
            return Err(fail(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            other => return Err(fail(format!("dtype {other:?}; F32 and BF16 weights are supported"))),
        };
        Ok(values)
    }

    fn linear(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear, EncoderError> {
        Ok(Linear {
            weight: self.get(&format!("{prefix}.weight"), &[outputs, inputs])?,
            bias: self.get(&format!("{prefix}.bias"), &[outputs])?,
            inputs,
            outputs,
        })
    }

    fn layer_norm(&self, prefix: &str, width: usize) -> Result<LayerNorm, EncoderError> {
        // Older checkpoints name LayerNorm's parameters gamma and beta.
        let gamma = self
            .get(&format!("{prefix}.weight"), &[width])
            .or_else(|_| self.get(&format!("{prefix}.gamma"), &[width]))?;
        let beta = self
            .get(&format!("{prefix}.bias"), &[width])
            .or_else(|_| self.get(&format!("{prefix}.beta"), &[width]))?;
        Ok(LayerNorm { gamma, beta })
    }
}

impl Bert {
    /// Reads the weights of `config` from the safetensors bytes of `path`.
    pub fn load(config: &BertConfig, bytes: &[u8], path: &Path) -> Result<Bert, EncoderError> {
        let invalid = |message: String| EncoderError {
            context: format!("reading the configuration of {}", path.display()),
            source: message.into(),
        };
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(invalid(format!("hidden_act {other:?} is not supported"))),
        };
        if config.position_embedding_type != "absolute" {
            return Err(invalid(format!(
                "position_embedding_type {:?} is not supported",
                config.position_embedding_type
            )));
        }
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            return Err(invalid(format!("hidden_size {h} is not a multiple of {heads} heads")));
        }
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| EncoderError {
            context: format!("reading {} as safetensors", path.display()),
            source: Box::new(e),
        })?;
        let w = Weights { file, path };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let (q, k, v) = (
                w.linear(&format!("{p}.attention.self.query"), h, h)?,
                w.linear(&format!("{p}.attention.self.key"), h, h)?,
                w.linear(&format!("{p}.attention.self.value"), h, h)?,
            );
            let qkv = Linear {
                weight: [q.weight, k.weight, v.weight].concat(),
                bias: [q.bias, k.bias, v.bias].concat(),
                inputs: h,
                outputs: 3 * h,
            };
            layers.push(Layer {
                qkv,
                attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), h, config.intermediate_size)?,
                output: w.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let type_rows = w
            .file
            .tensor("embeddings.token_type_embeddings.weight")
            .or_else(|_| w.file.tensor("bert.embeddings.token_type_embeddings.weight"))
            .map(|t| t.shape().first().copied().unwrap_or(1))
            .unwrap_or(1);
        Ok(Bert {
            hidden: h,
            heads,
            eps: config.layer_norm_eps as f32,
            activation,
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
            word: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: w.get("embeddings.token_type_embeddings.weight", &[type_rows, h])?,
            embedding_norm: w.layer_norm("embeddings.LayerNorm", h)?,
            layers,
        })
    }

    /// Width of the token states (and of the pooled vector).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The last hidden states of `batch` (token ids, each at most `max_position_embeddings`
    /// long and within the vocabulary), packed: the rows of sequence 0, then of sequence 1…,
    /// `hidden_size` values a row. Runs on the current rayon pool.
    pub fn forward(&self, batch: &[&[u32]]) -> Result<Vec<f32>, String> {
        let h = self.hidden;
        let total: usize = batch.iter().map(|s| s.len()).sum();
        let mut offsets = Vec::with_capacity(batch.len());
        let mut at = 0;
        for s in batch {
            if s.len() > self.max_positions {
                return Err(format!("an input of {} tokens is over {}", s.len(), self.max_positions));
            }
            offsets.push((at, s.len()));
            at += s.len();
        }
        // Embeddings.
        let mut x = vec![0f32; total * h];
        let mut row = 0;
        for s in batch {
            for (pos, &id) in s.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(format!("token id {id} is outside the vocabulary of {}", self.vocab));
                }
                let out = &mut x[row * h..(row + 1) * h];
                let (word, position, kind) = (
                    &self.word[id * h..(id + 1) * h],
                    &self.position[pos * h..(pos + 1) * h],
                    &self.token_type[..h],
                );
                for i in 0..h {
                    out[i] = word[i] + position[i] + kind[i];
                }
                row += 1;
            }
        }
        layer_norm_rows(&mut x, &self.embedding_norm, self.eps);

        let mut qkv = vec![0f32; total * 3 * h];
        let mut context = vec![0f32; total * h];
        let mut attended = vec![0f32; total * h];
        for layer in &self.layers {
            let intermediate_width = layer.intermediate.outputs;
            linear(&x, total, &layer.qkv, &mut qkv);
            self.attention(&qkv, &offsets, &mut context);
            linear(&context, total, &layer.attention_out, &mut attended);
            add_into(&mut attended, &x);
            layer_norm_rows(&mut attended, &layer.attention_norm, self.eps);
            let mut inner = vec![0f32; total * intermediate_width];
            linear(&attended, total, &layer.intermediate, &mut inner);
            activate(&mut inner, self.activation);
            linear(&inner, total, &layer.output, &mut x);
            add_into(&mut x, &attended);
            layer_norm_rows(&mut x, &layer.output_norm, self.eps);
        }
        Ok(x)
    }

    /// Self-attention of every sequence over its own tokens: `context` gets, for each token
    /// and head, the softmax-weighted values. `qkv` holds each token's query, key and value.
    fn attention(&self, qkv: &[f32], offsets: &[(usize, usize)], context: &mut [f32]) {
        let (h, heads) = (self.hidden, self.heads);
        let dh = h / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let tasks: Vec<(usize, usize, usize)> = offsets
            .iter()
            .flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head)))
            .collect();
        let arch = pulp::Arch::new();
        let outputs: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(start, len, head)| {
                let mut scores = vec![0f32; len * len];
                let base = start * 3 * h + head * dh;
                // Q, K and V of this head: len × dh, rows 3h apart.
                let q = View::new(base, (len, dh), (3 * h, 1));
                let k_t = View::new(base + h, (dh, len), (1, 3 * h));
                let v = View::new(base + 2 * h, (len, dh), (3 * h, 1));
                // scores = scale · Q Kᵀ
                matmul(
                    (&mut scores, View::new(0, (len, len), (len, 1))),
                    (qkv, q),
                    (qkv, k_t),
                    false,
                    (0.0, scale),
                    Parallelism::None,
                );
                arch.dispatch(
                    #[inline(always)]
                    || scores.chunks_exact_mut(len).for_each(softmax),
                );
                // out = softmax(scores) V
                let mut out = vec![0f32; len * dh];
                matmul(
                    (&mut out, View::new(0, (len, dh), (dh, 1))),
                    (&scores, View::new(0, (len, len), (len, 1))),
                    (qkv, v),
                    false,
                    (0.0, 1.0),
                    Parallelism::None,
                );
                out
            })
            .collect();
        for ((start, len, head), out) in tasks.into_iter().zip(outputs) {
            for r in 0..len {
                let row = (start + r) * h + head * dh;
                context[row..row + dh].copy_from_slice(&out[r * dh..(r + 1) * dh]);
            }
        }
    }
}

/// A matrix inside a slice: element (i, j) is at `offset + i·row_stride + j·col_stride`.
#[derive(Debug, Clone, Copy)]
struct View {
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl View {
    fn new(offset: usize, (rows, cols): (usize, usize), (row_stride, col_stride): (usize, usize)) -> View {
        View {
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// One past the highest index the view addresses (0 for an empty view); `None` if that
    /// does not fit a `usize`.
    fn end(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        let last_row = (self.rows - 1).checked_mul(self.row_stride)?;
        let last_col = (self.cols - 1).checked_mul(self.col_stride)?;
        self.offset.checked_add(last_row)?.checked_add(last_col)?.checked_add(1)
    }
}

/// `dst := alpha·dst + beta·lhs·rhs` (with `read_dst`; else `dst := beta·lhs·rhs`) on views of
/// three slices, by gemm's kernels. Panics, before touching anything, if the shapes do not
/// chain or a view reaches outside its slice; `dst` is a distinct `&mut` slice, so it cannot
/// alias the inputs.
#[allow(unsafe_code)]
fn matmul(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    rhs: (&[f32], View),
    read_dst: bool,
    (alpha, beta): (f32, f32),
    parallelism: Parallelism,
) {
    let ((dst, d), (lhs, l), (rhs, r)) = (dst, lhs, rhs);
    assert!(
        l.rows == d.rows && r.cols == d.cols && l.cols == r.rows,
        "matmul shapes {}x{} · {}x{} → {}x{}",
        l.rows,
        l.cols,
        r.rows,
        r.cols,
        d.rows,
        d.cols
    );
    assert!(
        d.end().is_some_and(|e| e <= dst.len())
            && l.end().is_some_and(|e| e <= lhs.len())
            && r.end().is_some_and(|e| e <= rhs.len()),
        "matmul view outside its slice"
    );
    // A stride of zero on the destination would write one element from several products.
    assert!(d.rows <= 1 || d.row_stride > 0);
    assert!(d.cols <= 1 || d.col_stride > 0);
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    // SAFETY: every element gemm reads or writes is (offset + i·row_stride + j·col_stride) of
    // a view with i < rows, j < cols, and each view's last such index was checked against its
    // slice above; the destination is an exclusive borrow distinct from both inputs, and its
    // strides are non-zero, so no two products write the same element.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
            stride(d.col_stride),
            stride(d.row_stride),
            read_dst,
            lhs.as_ptr().add(l.offset),
            stride(l.col_stride),
            stride(l.row_stride),
            rhs.as_ptr().add(r.offset),
            stride(r.col_stride),
            stride(r.row_stride),
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out := x Wᵀ + b` for `rows` rows of `x`, spread over the current rayon pool.
fn linear(x: &[f32], rows: usize, layer: &Linear, out: &mut [f32]) {
    let (k, n) = (layer.inputs, layer.outputs);
    for row in out[..rows * n].chunks_exact_mut(n) {
        row.copy_from_slice(&layer.bias);
    }
    let parallelism = if rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // out (rows × n) += x (rows × k) · Wᵀ, W being n × k row-major.
    matmul(
        (out, View::new(0, (rows, n), (n, 1))),
        (x, View::new(0, (rows, k), (k, 1))),
        (&layer.weight, View::new(0, (k, n), (1, k))),
        true,
        (1.0, 1.0),
        parallelism,
    );
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
    );
}

/// LayerNorm over each row (biased variance, as PyTorch).
fn layer_norm_rows(x: &mut [f32], norm: &LayerNorm, eps: f32) {
    let width = norm.gamma.len();
    let arch = pulp::Arch::new();
    x.par_chunks_mut(width * 64).for_each(|block| {
        arch.dispatch(
            #[inline(always)]
            || {
                let mut centred = vec![0f32; width];
                for row in block.chunks_exact_mut(width) {
                    let mean = sum(row) / width as f32;
                    centred
                        .iter_mut()
                        .zip(row.iter())
                        .for_each(|(c, v)| *c = (v - mean) * (v - mean));
                    let inv = 1.0 / (sum(&centred) / width as f32 + eps).sqrt();
                    for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                        *v = (*v - mean) * inv * g + b;
                    }
                }
            },
        )
    });
}

fn activate(x: &mut [f32], activation: Activation) {
    let arch = pulp::Arch::new();
    x.par_chunks_mut(16 * 1024).for_each(|block| {
        arch.dispatch(
            #[inline(always)]
            || match activation {
                Activation::GeluErf => block
                    .iter_mut()
                    .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
                Activation::GeluTanh => block.iter_mut().for_each(|v| {
                    let u = 0.797_884_6 * (*v + 0.044_715 * *v * *v * *v);
                    *v = 0.5 * *v * (1.0 + tanh(u));
                }),
                Activation::Relu => block.iter_mut().for_each(|v| *v = v.max(0.0)),
            },
        )
    });
}

/// Lanes of the element-wise reductions: independent partial sums (or maxima) that the
/// compiler keeps in one vector register, where a single running sum would be a chain of
/// dependent scalar additions.
const LANES: usize = 16;

/// The sum of `xs`, accumulated in [`LANES`] lanes.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The largest of `xs` (−∞ for none), in [`LANES`] lanes.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Softmax of one row, in place.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let m = max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - m));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `eˣ` in single precision without a library call (Cephes' `expf`: range reduction by ln 2,
/// a degree-5 polynomial, and the power of two put in the exponent bits). Relative error
/// within 2e-7 for x in [-87, 88]; smaller x gives 2⁻¹²⁶ × …, which softmax reads as 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer by adding and removing 1.5 × 2²³.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// The error function in single precision without a library call: the rational approximation
/// XLA and Eigen use (`x·P(x²)/Q(x²)` on [-4, 4], ±1 beyond).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.9546e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // tanh(x) = 1 − 2 / (e^{2x} + 1), with e^{2x} clamped by `exp`.
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Reads `config.json` of a model directory.
pub fn read_config(path: &Path) -> Result<BertConfig, EncoderError> {
    let bytes = std::fs::read(path).map_err(|e| EncoderError {
        context: format!("reading {}", path.display()),
        source: Box::new(e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| EncoderError {
        context: format!("reading {} as a BERT configuration", path.display()),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (converges to double precision for |x| ≤ 4 within
    /// a hundred terms), and 1 − erfc's asymptotic tail is not needed on this range.
    fn erf_reference(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_the_library() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0).min(1e-37), exp(-1000.0), "tiny, not NaN");
        assert!(exp(0.0) == 1.0);
    }

    #[test]
    fn erf_is_within_float_precision_of_the_series() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let want = erf_reference(f64::from(x.clamp(-4.0, 4.0)));
            let want = if x.abs() > 4.0 { want.signum() } else { want };
            worst = worst.max((f64::from(erf(x)) - want).abs());
        }
        assert!(worst < 2e-6, "worst absolute error {worst}");
        assert!(erf(1.0) > 0.8427 && erf(1.0) < 0.8428);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = vec![1.0, 3.0, 2.0, -50.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[2] && row[2] > row[0] && row[0] > row[3]);
        let want = 1.0 / (1.0 + (-1f32).exp() + (-2f32).exp() + (-53f32).exp());
        assert!((row[1] - want).abs() < 1e-6, "{} vs {want}", row[1]);
    }

    #[test]
    fn matmul_reads_strided_views() {
        // lhs = [[1, 2], [3, 4]] stored transposed (column-major); rhs = [[1, 0], [1, 1]].
        let lhs = [1.0, 3.0, 2.0, 4.0];
        let rhs = [1.0, 0.0, 1.0, 1.0];
        let mut dst = vec![0.0; 4];
        matmul(
            (&mut dst, View::new(0, (2, 2), (2, 1))),
            (&lhs, View::new(0, (2, 2), (1, 2))),
            (&rhs, View::new(0, (2, 2), (2, 1))),
            false,
            (0.0, 1.0),
            Parallelism::None,
        );
        assert_eq!(dst, vec![3.0, 2.0, 7.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn matmul_refuses_a_view_past_its_slice() {
        let lhs = [1.0; 4];
        let rhs = [1.0; 3];
        let mut dst = vec![0.0; 4];
        matmul(
            (&mut dst, View::new(0, (2, 2), (2, 1))),
            (&lhs, View::new(0, (2, 2), (2, 1))),
            (&rhs, View::new(0, (2, 2), (2, 1))),
            false,
            (0.0, 1.0),
            Parallelism::None,
        );
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn matmul_refuses_a_view_whose_extent_overflows() {
        let lhs = [1.0; 4];
        let mut dst = vec![0.0; 4];
        matmul(
            (&mut dst, View::new(0, (2, 2), (2, 1))),
            (&lhs, View::new(0, (2, 2), (2, 1))),
            (&lhs, View::new(0, (2, 2), (usize::MAX / 2, 1))),
            false,
            (0.0, 1.0),
            Parallelism::None,
        );
    }

    #[test]
    fn linear_adds_the_bias_to_the_product() {
        // W = [[1, 2], [3, 4], [5, 6]] (3 outputs × 2 inputs), b = [0.5, -1, 2].
        let layer = Linear {
            weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            bias: vec![0.5, -1.0, 2.0],
            inputs: 2,
            outputs: 3,
        };
        let x = [1.0, 1.0, 2.0, -1.0];
        let mut out = vec![0.0; 6];
        linear(&x, 2, &layer, &mut out);
        assert_eq!(out, vec![3.5, 6.0, 13.0, 0.5, 1.0, 6.0]);
    }
}
