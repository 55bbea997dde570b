//! GGUF model files: a reader (versions 2 and 3) and a small writer.
//!
//! The format is specified in ggml's `docs/gguf.md`
//! (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>). A file is, all
//! little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count x { key: string, value_type: u32, value }
//! tensor_count x { name: string, n_dims: u32, dims: n_dims x u64, type: u32, offset: u64 }
//! padding to `general.alignment` (default 32) | tensor data
//! ```
//!
//! with `string = { len: u64, utf-8 bytes }` and `array = { elem_type: u32, count: u64,
//! count x value }`. A tensor's `offset` is relative to the start of the data section
//! and is a multiple of the alignment. Dims are listed fastest-first: a tensor with dims
//! `[ne0, ne1]` is a row-major `[ne1, ne0]` matrix, so [`GgufFile::tensor_shape`] and
//! [`GgufFile::tensor_f64`] give the reversed dims.
//!
//! Tensor types F32, F16, Q8_0, Q4_0 and Q4_1 are dequantised to f64 exactly as their
//! definition says (blocks of 32 elements; `d` and `m` are IEEE half floats):
//!
//! | type | block bytes | layout | value of element `j` |
//! |---|---|---|---|
//! | Q8_0 | 34 | `d`, 32 x i8 `q` | `d * q[j]` |
//! | Q4_0 | 18 | `d`, 16 bytes `qs` | `d * (nib(j) - 8)` |
//! | Q4_1 | 20 | `d`, `m`, 16 bytes `qs` | `d * nib(j) + m` |
//!
//! where `nib(j)` is the low nibble of `qs[j]` for `j < 16` and the high nibble of
//! `qs[j - 16]` for `j >= 16`. Other types (the K-quants, BF16, ...) are recognised by
//! name and refused with an error naming the tensor.
//!
//! The file is untrusted input: every count, length and offset is checked against the
//! file size before anything is allocated, so a truncated or corrupted file gives an
//! error naming the field at fault, never a panic or a huge allocation.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tessera::{Error, Result, Tensor};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (arrays of arrays of ...).
const MAX_ARRAY_DEPTH: usize = 16;
/// Elements per block of the block-quantised types supported here.
pub const QK: usize = 32;

/// Path shown in errors about GGUF bytes that did not come from a file.
const IN_MEMORY: &str = "<in-memory GGUF>";

fn gguf_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Values and types
// ---------------------------------------------------------------------------------------

/// One metadata value. Arrays hold values of one type (the writer refuses mixed arrays);
/// an empty array keeps no element type and is written back as an array of `U8`.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `UINT8` (type 0).
    U8(u8),
    /// `INT8` (type 1).
    I8(i8),
    /// `UINT16` (type 2).
    U16(u16),
    /// `INT16` (type 3).
    I16(i16),
    /// `UINT32` (type 4).
    U32(u32),
    /// `INT32` (type 5).
    I32(i32),
    /// `UINT64` (type 10).
    U64(u64),
    /// `INT64` (type 11).
    I64(i64),
    /// `FLOAT32` (type 6).
    F32(f32),
    /// `FLOAT64` (type 12).
    F64(f64),
    /// `BOOL` (type 7), one byte 0 or 1.
    Bool(bool),
    /// `STRING` (type 8), UTF-8.
    String(String),
    /// `ARRAY` (type 9).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF value type id (`gguf_metadata_value_type`).
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// The type's name as errors show it (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }

    /// The value as an `i128` when it is an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a `u64` when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// The value as an `i64` when it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_int().and_then(|v| i64::try_from(v).ok())
    }

    /// The value as an `f64` when it is a float (`F32` or `F64`).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice when it is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool when it is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements when the value is an `Array`.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

fn value_type_name(id: u32) -> &'static str {
    match id {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of a value of type `id`, or `None` for an unknown type.
fn min_value_size(id: u32) -> Option<u64> {
    Some(match id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

/// A ggml tensor type id (`ggml_type`), known by name or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// ggml's tensor types: id, name, elements per block, bytes per block.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// 32-bit IEEE floats.
    pub const F32: GgmlType = GgmlType(0);
    /// 16-bit IEEE floats.
    pub const F16: GgmlType = GgmlType(1);
    /// Blocks of 32: `f16 d`, 16 bytes of nibbles; `d * (q - 8)`.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// Blocks of 32: `f16 d`, `f16 m`, 16 bytes of nibbles; `d * q + m`.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// Blocks of 32: `f16 d`, 32 x i8; `d * q`.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// The types [`GgufFile::tensor_f64`] dequantises.
    pub const SUPPORTED: [GgmlType; 5] = [Self::F32, Self::F16, Self::Q8_0, Self::Q4_0, Self::Q4_1];

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|e| e.0 == self.0)
    }

    /// ggml's name for the type (`Q4_K`, `BF16`, ...); `None` for an unknown id.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|e| e.1)
    }

    /// `(elements per block, bytes per block)`; `None` for an unknown id.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        self.entry().map(|e| (e.2, e.3))
    }

    /// True for the types this module dequantises.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown type id {}", self.0),
        }
    }
}

fn supported_list() -> String {
    let names: Vec<String> = GgmlType::SUPPORTED.iter().map(|t| t.to_string()).collect();
    names.join(", ")
}

/// One entry of the tensor-info table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as GGUF lists them, fastest-varying first.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`; checked not to overflow).
    pub n_elements: u64,
    /// Size of the data in bytes; `None` when the type id is unknown.
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// The row-major shape: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim is at most `n_elements`, which the reader checked fits in usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Half floats
// ---------------------------------------------------------------------------------------

/// The value of an IEEE 754 binary16 number, exactly (every half float is an f64).
pub fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// The binary16 number nearest to `x` (ties to even), as ggml's `GGML_FP32_TO_FP16`;
/// out-of-range values become infinities, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    // Unbiased exponent; f32 subnormals are far below the smallest half subnormal.
    let e = exp - 127;
    if e > 15 {
        return sign | 0x7c00;
    }
    if exp == 0 || e < -25 {
        return sign;
    }
    // The significand with its implicit bit: 24 bits.
    let m = man | 0x80_0000;
    // Half normal: 10 fraction bits kept, shift 13; half subnormal: shift more.
    let shift = if e >= -14 { 13 } else { 13 + (-14 - e) } as u32;
    let kept = m >> shift;
    let rest = m & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let mut q = kept;
    if rest > half || (rest == half && kept & 1 == 1) {
        q += 1;
    }
    let out = if e >= -14 {
        // q has the implicit bit at 1 << 10; a carry into 1 << 11 bumps the exponent,
        // which the addition below handles (fraction 0, exponent + 1).
        (((e + 15) as u32) << 10) + (q - 0x400)
    } else {
        // Subnormal (q may round up into the smallest normal, which is also right).
        q
    };
    if out >= 0x7c00 {
        return sign | 0x7c00;
    }
    sign | out as u16
}

// ---------------------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------------------

fn half_at(b: &[u8], i: usize) -> f64 {
    f16_to_f64(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Appends the values of `data` (a whole number of blocks of type `ty`) to `out`.
/// Errors (naming nothing; the caller adds the tensor) for unsupported types or a
/// length that is not a whole number of blocks.
pub fn dequantize_into(
    ty: GgmlType,
    data: &[u8],
    out: &mut Vec<f64>,
) -> std::result::Result<(), String> {
    let (_, block_bytes) = ty
        .block_layout()
        .ok_or_else(|| format!("{ty} is not a ggml type"))?;
    if !(data.len() as u64).is_multiple_of(block_bytes) {
        return Err(format!(
            "{} bytes are not a whole number of {ty} blocks of {block_bytes} bytes",
            data.len()
        ));
    }
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| half_at(c, 0))),
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(34) {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * f64::from(q as i8)));
            }
        }
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(18) {
                let d = half_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * f64::from(i32::from(q & 0xf) - 8)));
                out.extend(qs.iter().map(|&q| d * f64::from(i32::from(q >> 4) - 8)));
            }
        }
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(20) {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * f64::from(q & 0xf) + m));
                out.extend(qs.iter().map(|&q| d * f64::from(q >> 4) + m));
            }
        }
        _ => {
            return Err(format!(
                "type {ty} is not supported ({} are)",
                supported_list()
            ))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{} needs {n} bytes at offset {} but the file ends at {}",
                what(),
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let len = self.u64(&|| format!("{} (string length)", what()))?;
        if len > self.remaining() {
            return Err(format!(
                "{}: string length {len} at offset {} exceeds the {} bytes left in the file",
                what(),
                self.pos - 8,
                self.remaining()
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{}: string is not UTF-8 ({e})", what()))
    }

    fn value(
        &mut self,
        ty: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{}: bool byte is {b}, must be 0 or 1", what())),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                let elem = self.u32(&|| format!("{} (array element type)", what()))?;
                let count = self.u64(&|| format!("{} (array length)", what()))?;
                let min = min_value_size(elem)
                    .ok_or_else(|| format!("{}: unknown array element type {elem}", what()))?;
                if count > self.remaining() / min {
                    return Err(format!(
                        "{}: array of {count} {} values cannot fit in the {} bytes left in the file",
                        what(),
                        value_type_name(elem),
                        self.remaining()
                    ));
                }
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    ));
                }
                // Grow as elements are actually read: memory stays proportional to the
                // bytes consumed.
                let mut items = Vec::with_capacity((count as usize).min(1 << 16));
                for i in 0..count {
                    let item_what = || format!("{}[{i}]", what());
                    items.push(self.value(elem, depth + 1, &item_what)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(format!("{}: unknown value type {t}", what())),
        })
    }
}

/// A GGUF file held in memory: its metadata, tensor table and data.
#[derive(Clone)]
pub struct GgufFile {
    path: PathBuf,
    bytes: Vec<u8>,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

fn parse(b: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { b, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "the magic".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic {magic:02x?} ({:?}): not a GGUF file",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = c.u32(&|| "field version".to_string())?;
    if !(2..=3).contains(&version) {
        return Err(if (2..=3).contains(&version.swap_bytes()) {
            format!(
                "field version: {version:#x} is a big-endian GGUF file; only little-endian is supported"
            )
        } else {
            format!("field version: GGUF version {version} is not supported (2 and 3 are)")
        });
    }
    let tensor_count = c.u64(&|| "field tensor_count".to_string())?;
    let kv_count = c.u64(&|| "field metadata_kv_count".to_string())?;
    // A key/value needs at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    if kv_count > c.remaining() / 13 {
        return Err(format!(
            "field metadata_kv_count: {kv_count} key/values cannot fit in the {} bytes left in the file",
            c.remaining()
        ));
    }
    if tensor_count > c.remaining() / 24 {
        return Err(format!(
            "field tensor_count: {tensor_count} tensors cannot fit in the {} bytes left in the file",
            c.remaining()
        ));
    }

    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut meta_index = HashMap::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let ty = c.u32(&|| format!("metadata {key}: value type"))?;
        let value = c.value(ty, 0, &|| format!("metadata {key}"))?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(format!("metadata {key}: key appears twice"));
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
                _ => {
                    return Err(format!(
                        "metadata general.alignment: {v:?} is not a power of two in 1..=2^30"
                    ))
                }
            }
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut tensor_index = HashMap::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = c.string(&|| format!("tensor info #{i} (name)"))?;
        let n_dims = c.u32(&|| format!("tensor {name}: n_dims"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(format!(
                "tensor {name}: n_dims is {n_dims}, at most {MAX_DIMS} are allowed"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for k in 0..n_dims {
            dims.push(c.u64(&|| format!("tensor {name}: dims[{k}]"))?);
        }
        let ggml_type = GgmlType(c.u32(&|| format!("tensor {name}: type"))?);
        let offset = c.u64(&|| format!("tensor {name}: offset"))?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok() && n <= i64::MAX as u64)
            .ok_or_else(|| format!("tensor {name}: the product of dims {dims:?} overflows"))?;
        let n_bytes = match ggml_type.block_layout() {
            None => None,
            Some((block, block_bytes)) => {
                let ne0 = dims.first().copied().unwrap_or(1);
                if ne0 % block != 0 {
                    return Err(format!(
                        "tensor {name}: dims[0] = {ne0} is not a multiple of the {ggml_type} block size {block}"
                    ));
                }
                Some(
                    (n_elements / block)
                        .checked_mul(block_bytes)
                        .ok_or_else(|| format!("tensor {name}: data size overflows"))?,
                )
            }
        };
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(format!("tensor {name}: name appears twice"));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let len = b.len() as u64;
    for t in &tensors {
        if let Some(n) = t.n_bytes {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(n));
            match end {
                Some(e) if e <= len => {}
                _ => {
                    return Err(format!(
                        "tensor {}: data at offset {} + {} ({n} bytes of {}) lies beyond the end of the file ({len} bytes)",
                        t.name, data_offset, t.offset, t.ggml_type
                    ))
                }
            }
        }
    }
    Ok(Parsed {
        version,
        metadata,
        meta_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

impl GgufFile {
    /// Reads and parses a GGUF file; errors name the file and the field at fault.
    pub fn read(path: &Path) -> Result<GgufFile> {
        let bytes = std::fs::read(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::parse_named(path.to_path_buf(), bytes)
    }

    /// Parses GGUF bytes held in memory (errors show the path `<in-memory GGUF>`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse_named(PathBuf::from(IN_MEMORY), bytes)
    }

    fn parse_named(path: PathBuf, bytes: Vec<u8>) -> Result<GgufFile> {
        let p = parse(&bytes).map_err(|d| gguf_error(&path, format!("GGUF {d}")))?;
        Ok(GgufFile {
            path,
            bytes,
            version: p.version,
            metadata: p.metadata,
            meta_index: p.meta_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        gguf_error(&self.path, detail)
    }

    /// The file this was read from (`<in-memory GGUF>` for [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The metadata value of `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata, in file order.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.metadata(key)
            .ok_or_else(|| self.err(format!("GGUF metadata {key} is missing")))
    }

    fn wrong_type(&self, key: &str, want: &str, got: &GgufValue) -> Error {
        let shown = match got {
            GgufValue::Array(a) => format!("an array of {} values", a.len()),
            GgufValue::String(s) if s.len() > 40 => format!("string of {} bytes", s.len()),
            v => format!("{v:?}"),
        };
        self.err(format!(
            "GGUF metadata {key}: expected {want}, found {} {shown}",
            got.type_name()
        ))
    }

    /// `key` as a u32: any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer in u32 range", v))
    }

    /// `key` as a u64: any non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// `key` as an i64: any integer that fits.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64()
            .ok_or_else(|| self.wrong_type(key, "an integer in i64 range", v))
    }

    /// `key` as an f32: an `F32`, or an `F64` rounded.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_f64(key).map(|x| x as f32)
    }

    /// `key` as an f64: an `F32` (exactly) or an `F64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "a float", v))
    }

    /// `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v))
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    fn get_array(&self, key: &str, want: &str) -> Result<&[GgufValue]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, want, v))
    }

    fn array_elems<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        let a = self.get_array(key, want)?;
        a.iter()
            .enumerate()
            .map(|(i, v)| f(v).ok_or_else(|| self.wrong_type(&format!("{key}[{i}]"), want, v)))
            .collect()
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array_elems(key, "an array of strings", GgufValue::as_str)
    }

    /// `key` as an array of f32 (elements `F32`, or `F64` rounded).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_elems(key, "an array of floats", |v| v.as_f64().map(|x| x as f32))
    }

    /// `key` as an array of i32 (elements of any integer type that fit).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_elems(key, "an array of integers in i32 range", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }

    /// `key` as an array of u32 (elements of any integer type that fit).
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.array_elems(key, "an array of integers in u32 range", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    /// The tensor names, in file order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// All tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| self.err(format!("GGUF tensor {name} is missing")))
    }

    /// The row-major shape of tensor `name` (its GGUF dims reversed).
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.require_tensor(name)?.shape())
    }

    /// The raw bytes of tensor `name`, in its stored type.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.require_tensor(name)?;
        let n = t.n_bytes.ok_or_else(|| {
            self.err(format!(
                "GGUF tensor {name}: {} is not a known ggml type",
                t.ggml_type
            ))
        })?;
        // The reader checked data_offset + offset + n <= file length.
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.bytes[start..start + n as usize])
    }

    /// Tensor `name` dequantised to f64, with its row-major shape. Errors name the tensor
    /// when it is missing or of a type other than F32, F16, Q8_0, Q4_0, Q4_1.
    pub fn tensor_f64(&self, name: &str) -> Result<Tensor<f64>> {
        let t = self.require_tensor(name)?;
        if !t.ggml_type.is_supported() {
            return Err(self.err(format!(
                "GGUF tensor {name}: type {} is not supported ({} are)",
                t.ggml_type,
                supported_list()
            )));
        }
        let bytes = self.tensor_bytes(name)?;
        let mut out = Vec::with_capacity(t.n_elements as usize);
        dequantize_into(t.ggml_type, bytes, &mut out)
            .map_err(|d| self.err(format!("GGUF tensor {name}: {d}")))?;
        Tensor::from_vec(&t.shape(), out)
    }
}

// ---------------------------------------------------------------------------------------
// Quantisers (llama.cpp's reference ones) and the writer
// ---------------------------------------------------------------------------------------

fn check_blocks(x: &[f32], what: &str) {
    assert!(
        x.len().is_multiple_of(QK),
        "{what}: {} values are not a whole number of blocks of {QK}",
        x.len()
    );
}

/// Quantises to Q8_0 as ggml's `quantize_row_q8_0_ref`: per block `d = amax / 127`,
/// `q = round(x / d)` (ties away from zero), `d` stored as f16.
///
/// # Panics
/// When `x.len()` is not a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    check_blocks(x, "quantize_q8_0");
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for b in x.chunks_exact(QK) {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Quantises to Q4_0 as ggml's `quantize_row_q4_0_ref`: per block the value of largest
/// magnitude `max` (first one on ties), `d = max / -8`,
/// `q = min(15, trunc(x / d + 8.5))`, `d` stored as f16.
///
/// # Panics
/// When `x.len()` is not a multiple of 32.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    check_blocks(x, "quantize_q4_0");
    let mut out = Vec::with_capacity(x.len() / QK * 18);
    for b in x.chunks_exact(QK) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
        out.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
    }
    out
}

/// Quantises to Q4_1 as ggml's `quantize_row_q4_1_ref`: per block `d = (max - min) / 15`,
/// `q = min(15, trunc((x - min) / d + 0.5))`, `d` and `m = min` stored as f16.
///
/// # Panics
/// When `x.len()` is not a multiple of 32.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    check_blocks(x, "quantize_q4_1");
    let mut out = Vec::with_capacity(x.len() / QK * 20);
    for b in x.chunks_exact(QK) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in b {
            min = min.min(v);
            max = max.max(v);
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
        let q = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
        out.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
    }
    out
}

/// Builds a GGUF file: metadata and tensors in insertion order. Used by tests and tools
/// that need small model files.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Path shown in writer errors.
const WRITER: &str = "<GgufWriter>";

impl GgufWriter {
    /// An empty version-3 file with the default alignment.
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version written in the header (the layout of 2 and 3 is the same).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets the alignment and records it as `general.alignment` (u32).
    ///
    /// # Panics
    /// When `alignment` is not a power of two.
    pub fn alignment(&mut self, alignment: u32) -> &mut Self {
        assert!(
            alignment.is_power_of_two(),
            "GGUF alignment must be a power of two"
        );
        self.alignment = alignment.into();
        self.metadata("general.alignment", GgufValue::U32(alignment))
    }

    /// Adds (or replaces) a metadata key.
    pub fn metadata(&mut self, key: impl Into<String>, value: GgufValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor given row-major `shape` and values, stored as `ty` (F32, F16, Q8_0,
    /// Q4_0, Q4_1; the quantised types need a last dimension that is a multiple of 32).
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
        ty: GgmlType,
    ) -> Result<&mut Self> {
        let err = |d: String| gguf_error(Path::new(WRITER), format!("tensor {name}: {d}"));
        if values.len() != tessera::tensor::numel(shape) {
            return Err(err(format!("{} values for shape {shape:?}", values.len())));
        }
        let data = match ty {
            GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|&v| f32_to_f16(v).to_le_bytes())
                .collect(),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let last = shape.last().copied().unwrap_or(1);
                if last % QK != 0 {
                    return Err(err(format!(
                        "last dimension {last} is not a multiple of the {ty} block size {QK}"
                    )));
                }
                match ty {
                    GgmlType::Q8_0 => quantize_q8_0(values),
                    GgmlType::Q4_0 => quantize_q4_0(values),
                    _ => quantize_q4_1(values),
                }
            }
            _ => return Err(err(format!("the writer cannot quantise to {ty}"))),
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_raw(name, &dims, ty, data)
    }

    /// Adds a tensor from raw bytes in type `ty`, `dims` in GGUF order (fastest first).
    /// The byte count must match the type's block layout when the type is known.
    pub fn tensor_raw(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let err = |d: String| gguf_error(Path::new(WRITER), format!("tensor {name}: {d}"));
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(err("added twice".into()));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err("dims overflow".into()))?;
        let n_bytes = ty.block_layout().map(|(b, bb)| n_elements / b * bb);
        if let Some(n) = n_bytes {
            if n != data.len() as u64 {
                return Err(err(format!(
                    "{} bytes given, {ty} {dims:?} needs {n}",
                    data.len()
                )));
            }
        }
        self.tensors.push((
            TensorInfo {
                name: name.to_string(),
                dims: dims.to_vec(),
                ggml_type: ty,
                offset: 0,
                n_elements,
                n_bytes,
            },
            data,
        ));
        Ok(self)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v)
                .map_err(|d| gguf_error(Path::new(WRITER), format!("metadata {k}: {d}")))?;
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (t, data) in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len() as u64);
        }
        let data_start = align(out.len() as u64);
        out.resize(data_start as usize, 0);
        for ((_, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    /// Writes the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::File {
            path: path.to_path_buf(),
            cause: source,
        })
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) -> std::result::Result<(), String> {
    match v {
        GgufValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(items) => {
            let elem = items.first().map_or(0, GgufValue::type_id);
            if let Some(bad) = items.iter().find(|i| i.type_id() != elem) {
                return Err(format!(
                    "array mixes {} and {} elements",
                    value_type_name(elem),
                    bad.type_name()
                ));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
mod tests;
