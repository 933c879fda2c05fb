//! A whole format-2 pack (design §1.3): `"ATOPACK2"`, the frames back to
//! back, the sealed trailer body and format 1's 44-byte tail (so
//! `pack::parse_trailer` finds the body). The pack id is the blake3 of the
//! whole file, as in format 1.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::frame::{decode_frame, DecodedFrame, EncodedFrame, FrameError};
use super::trailer::{FrameEntry, TrailerV2};
use super::PACK2_MAGIC;
use crate::error::Error;
use crate::id::Id;
use crate::store::pack::{parse_trailer, PackBody, PackIndexError, TRAILER_LEN};
use crate::store::seal::Sealer;

/// Streams a format-2 pack to `W`, hashing as it goes.
pub struct PackWriterV2<W: Write> {
    body: PackBody<W>,
    trailer: TrailerV2,
}

/// A finished format-2 pack: its id, object name, size and table.
#[derive(Debug)]
pub struct FinishedPackV2 {
    pub id: Id,
    pub name: String,
    pub size: u64,
    pub trailer: TrailerV2,
}

impl PackWriterV2<BufWriter<File>> {
    /// A pack written to a new private file at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = crate::store::backend::create_private_file(path)?;
        PackWriterV2::new(BufWriter::with_capacity(1 << 20, file))
    }

    /// Finishes the pack and fsyncs its file.
    pub fn finish_file(self, level: i32, sealer: &Sealer) -> std::io::Result<FinishedPackV2> {
        let (out, done) = self.finish(level, sealer)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(done)
    }
}

impl<W: Write> PackWriterV2<W> {
    pub fn new(out: W) -> std::io::Result<Self> {
        Ok(PackWriterV2 {
            body: PackBody::start(out, PACK2_MAGIC)?,
            trailer: TrailerV2::default(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.body.len()
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.trailer.frames.is_empty()
    }

    /// Appends a frame; returns its index in the pack.
    pub fn add(&mut self, frame: EncodedFrame) -> std::io::Result<usize> {
        // Offsets and lengths are u32 on disk: a frame that would end past
        // 4 GiB is refused rather than recorded at a wrapped offset.
        let len = self.body.len();
        let end = len + frame.stored.len() as u64;
        let (Ok(offset), Ok(stored_len), true) = (
            u32::try_from(len),
            u32::try_from(frame.stored.len()),
            end <= u32::MAX as u64,
        ) else {
            return Err(invalid(format!(
                "a frame of {} bytes at offset {} would end past the 4 GiB a pack addresses",
                frame.stored.len(),
                len
            )));
        };
        let n_chunks = match u16::try_from(frame.chunks.len()) {
            Ok(n) if n > 0 && n as u32 <= super::MAX_FRAME_CHUNKS => n,
            _ => return Err(invalid(format!("a frame of {} chunks", frame.chunks.len()))),
        };
        let first_chunk = u32::try_from(self.trailer.chunks.len())
            .map_err(|_| invalid("too many chunks in one pack".to_string()))?;
        self.body.write(&frame.stored)?;
        self.trailer.frames.push(FrameEntry {
            offset,
            stored_len,
            first_chunk,
            n_chunks,
            codec: frame.codec,
            kind: frame.kind,
            dict: 0,
        });
        self.trailer.chunks.extend(frame.chunks);
        Ok(self.trailer.frames.len() - 1)
    }

    /// Writes the trailer (zstd at `level`, sealed) and the tail; returns
    /// the writer's output and the finished pack.
    pub fn finish(self, level: i32, sealer: &Sealer) -> std::io::Result<(W, FinishedPackV2)> {
        let sealed = self.trailer.seal(level, sealer)?;
        let (out, id, size) = self.body.finish(&sealed)?;
        Ok((
            out,
            FinishedPackV2 {
                id,
                name: crate::store::pack::pack_name(&id),
                size,
                trailer: self.trailer,
            },
        ))
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// A format-2 pack's table, checked, with the reads it allows: the caller
/// fetches a frame's bytes (`frame_range`) and decodes only that frame.
#[derive(Debug)]
pub struct PackReaderV2 {
    trailer: TrailerV2,
}

impl PackReaderV2 {
    /// Where the trailer body lies in a pack of `size` bytes whose last
    /// [`TRAILER_LEN`] bytes are `tail`: (offset, length, checksum).
    pub fn locate(size: u64, tail: &[u8]) -> Result<(u64, usize, [u8; 32]), PackIndexError> {
        parse_trailer(size, tail)
    }

    /// Checks and decodes the stored trailer body read at `body_offset`.
    pub fn open(
        body: Vec<u8>,
        checksum: &[u8; 32],
        body_offset: u64,
        sealer: &Sealer,
    ) -> Result<PackReaderV2, PackIndexError> {
        if blake3::hash(&body).as_bytes() != checksum {
            return Err(PackIndexError::IndexChecksum);
        }
        Ok(PackReaderV2 {
            trailer: TrailerV2::open(body, body_offset, sealer)?,
        })
    }

    /// Reads the table of a whole pack held in memory.
    pub fn from_bytes(pack: &[u8], sealer: &Sealer) -> Result<PackReaderV2, PackIndexError> {
        let size = pack.len() as u64;
        let tail = pack
            .get(pack.len().saturating_sub(TRAILER_LEN)..)
            .unwrap_or(&[]);
        let (offset, len, checksum) = Self::locate(size, tail)?;
        if pack.get(..PACK2_MAGIC.len()) != Some(PACK2_MAGIC.as_slice()) {
            return Err(PackIndexError::IndexDecode(
                "not a format-2 pack: ATOPACK2 missing".into(),
            ));
        }
        let body = pack
            .get(offset as usize..offset as usize + len)
            .ok_or(PackIndexError::BadIndexLength)?;
        Self::open(body.to_vec(), &checksum, offset, sealer)
    }

    pub fn trailer(&self) -> &TrailerV2 {
        &self.trailer
    }

    /// The first chunk record with id `id` (a linear scan: lookups across
    /// packs go through the chunk index, not through this).
    pub fn position(&self, id: &Id) -> Option<usize> {
        self.trailer.chunks.iter().position(|c| c.id == *id)
    }

    /// The byte range of frame `fi` in the pack file.
    pub fn frame_range(&self, fi: usize) -> Option<std::ops::Range<u64>> {
        let f = self.trailer.frames.get(fi)?;
        Some(f.offset as u64..f.offset as u64 + f.stored_len as u64)
    }

    /// Decodes frame `fi` from its stored bytes, re-hashing every chunk.
    pub fn decode_frame(
        &self,
        fi: usize,
        stored: Vec<u8>,
        sealer: &Sealer,
    ) -> Result<DecodedFrame, FrameError> {
        let Some(f) = self.trailer.frames.get(fi) else {
            return Err(FrameError {
                ids: Vec::new(),
                detail: format!("frame {fi} is not in the pack"),
            });
        };
        decode_frame(stored, f.codec, self.trailer.frame_chunks(fi), sealer)
    }

    /// Reads chunk `id` from the pack's bytes (decoding only its frame),
    /// checked against its id.
    pub fn read_chunk(&self, pack: &[u8], id: &Id, sealer: &Sealer) -> Result<Vec<u8>, Error> {
        let missing = || Error::ChunkMissing { hash: id.to_hex() };
        let ci = self.position(id).ok_or_else(missing)?;
        let fi = self.trailer.frame_of(ci).ok_or_else(missing)?;
        let first = self.trailer.frames.get(fi).ok_or_else(missing)?.first_chunk as usize;
        let stored = self
            .frame_range(fi)
            .and_then(|r| pack.get(r.start as usize..r.end as usize))
            .ok_or_else(|| Error::ChunkCorrupt {
                hash: id.to_hex(),
                detail: "its frame lies outside the pack".to_string(),
            })?;
        let frame = self
            .decode_frame(fi, stored.to_vec(), sealer)
            .map_err(|e| frame_error_for(&e, id))?;
        match frame.chunk(ci - first) {
            Some(r) => r.map(<[u8]>::to_vec),
            None => Err(missing()),
        }
    }
}

/// The error a frame failure gives the chunk asked for.
fn frame_error_for(e: &FrameError, id: &Id) -> Error {
    Error::ChunkCorrupt {
        hash: id.to_hex(),
        detail: format!("its frame {}", e.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack2::{FrameBuf, FrameKind, FrameParams};

    fn frame(bytes: &[u8]) -> EncodedFrame {
        let p = FrameParams::default_v2();
        let mut b = FrameBuf::new(FrameKind::Data);
        b.push(Id::hash(bytes), bytes, &p).unwrap();
        b.encode(&p, &Sealer::Plain)
    }

    #[test]
    fn a_frame_past_u32_offsets_is_refused_not_wrapped() {
        let mut w = PackWriterV2::new(Vec::new()).unwrap();
        assert_eq!(w.add(frame(b"abc")).unwrap(), 0);
        // As if 4 GiB had been written (without writing them).
        w.body.pretend_len(u32::MAX as u64 - 3);
        assert_eq!(w.add(frame(b"abc")).unwrap(), 1);
        assert_eq!(w.trailer.frames[1].offset, u32::MAX - 3);
        let e = w.add(frame(b"abc")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("4 GiB"), "{e}");
        assert_eq!(w.trailer.frames.len(), 2);
        let mut empty = frame(b"x");
        empty.chunks.clear();
        assert!(w.add(empty).is_err());
    }

    #[test]
    fn a_pack_file_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pack");
        let mut w = PackWriterV2::create(&path).unwrap();
        w.add(frame(b"chunk")).unwrap();
        let done = w.finish_file(3, &Sealer::Plain).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((done.size, done.id), (bytes.len() as u64, Id::hash(&bytes)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = PackReaderV2::from_bytes(&bytes, &Sealer::Plain).unwrap();
        let got = r.read_chunk(&bytes, &Id::hash(b"chunk"), &Sealer::Plain);
        assert_eq!(got.unwrap(), b"chunk");
        let missing = r.read_chunk(&bytes, &Id::hash(b"other"), &Sealer::Plain);
        assert!(matches!(missing, Err(Error::ChunkMissing { .. })));
    }
}
