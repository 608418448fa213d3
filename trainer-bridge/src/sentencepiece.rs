//! A SentencePiece `tokenizer.model` (a protobuf `ModelProto`) read into the vocabulary fields a
//! GGUF carries (`tokenizer.ggml.tokens/scores/token_type`, `add_space_prefix`, special ids), so
//! the same builder ([`crate::tokenizer::tokenizer_json_from_ggml`]) turns it into a
//! `tokenizer.json`. Only the fields llama.cpp's converter reads are decoded; the rest is skipped.

use anyhow::{anyhow, bail, Context};

use crate::tokenizer::GgmlVocab;

/// The vocabulary of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    /// SentencePiece's piece types, which GGUF keeps as they are (1 normal, 2 unknown,
    /// 3 control, 4 user-defined, 5 unused, 6 byte).
    pub types: Vec<i64>,
    /// `normalizer_spec.add_dummy_prefix` (GGUF's `add_space_prefix`).
    pub add_dummy_prefix: bool,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or_else(|| anyhow!("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes")
    }

    fn bytes(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| anyhow!("truncated field"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: (number, wire type, payload for length-delimited / fixed, varint value).
    fn field(&mut self) -> anyhow::Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed(self.bytes(8)?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| anyhow!("field too long"))?;
                Field::Bytes(self.bytes(n)?)
            }
            5 => Field::Fixed(self.bytes(4)?),
            w => bail!("unsupported protobuf wire type {w}"),
        };
        Ok(Some((key >> 3, f)))
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed(&'a [u8]),
    Bytes(&'a [u8]),
}

fn id(v: u64) -> Option<u32> {
    // Protobuf int32 -1 ("none") arrives as a 64-bit two's complement varint.
    u32::try_from(v).ok()
}

impl SpmModel {
    /// Parse a `tokenizer.model`.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<SpmModel> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            scores: Vec::new(),
            types: Vec::new(),
            add_dummy_prefix: true,
            unk_id: Some(0),
            bos_id: Some(1),
            eos_id: Some(2),
        };
        let mut r = Reader { b: bytes, pos: 0 };
        while let Some((num, f)) = r.field()? {
            match (num, f) {
                (1, Field::Bytes(p)) => {
                    let (mut piece, mut score, mut ty) = (None, 0f32, 1i64);
                    let mut pr = Reader { b: p, pos: 0 };
                    while let Some((n, f)) = pr.field()? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => piece = Some(std::str::from_utf8(s).context("a piece is not UTF-8")?),
                            (2, Field::Fixed(s)) if s.len() == 4 => score = f32::from_le_bytes(s.try_into().expect("4 bytes")),
                            (3, Field::Varint(t)) => ty = t as i64,
                            _ => {}
                        }
                    }
                    m.pieces.push(piece.ok_or_else(|| anyhow!("piece #{} has no text", m.pieces.len()))?.to_string());
                    m.scores.push(score);
                    m.types.push(ty);
                }
                (2, Field::Bytes(t)) => {
                    let mut tr = Reader { b: t, pos: 0 };
                    while let Some((n, f)) = tr.field()? {
                        match (n, f) {
                            (40, Field::Varint(v)) => m.unk_id = id(v),
                            (41, Field::Varint(v)) => m.bos_id = id(v),
                            (42, Field::Varint(v)) => m.eos_id = id(v),
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(n)) => {
                    let mut nr = Reader { b: n, pos: 0 };
                    while let Some((k, f)) = nr.field()? {
                        if let (3, Field::Varint(v)) = (k, f) {
                            m.add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            bail!("no pieces: not a SentencePiece model");
        }
        Ok(m)
    }

    /// Read and parse a `tokenizer.model` file.
    pub fn open(path: &std::path::Path) -> anyhow::Result<SpmModel> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        SpmModel::parse(&bytes).with_context(|| format!("{} is not a SentencePiece tokenizer.model", path.display()))
    }

    /// A Hugging Face `tokenizer.json` giving llama.cpp's ids for this vocabulary.
    pub fn tokenizer_json(&self) -> anyhow::Result<String> {
        let tokens: Vec<&str> = self.pieces.iter().map(String::as_str).collect();
        let v = GgmlVocab {
            model: "llama",
            pre: None,
            tokens: &tokens,
            token_types: Some(&self.types),
            merges: &[],
            scores: Some(&self.scores),
            add_space_prefix: Some(self.add_dummy_prefix),
            unk_id: self.unk_id,
        };
        crate::tokenizer::tokenizer_json_from_ggml(&v)?.ok_or_else(|| anyhow!("SentencePiece vocabulary not rebuilt"))
    }
}
