//! The journal file: a magic header, then records appended one after another into a file
//! that was filled with zeros when it was made, so an append rewrites data blocks only.
//!
//! A record is `len: u32 LE`, `crc: u32 LE`, then `len` bytes of payload. The checksum
//! (CRC-32C) covers the length field and the payload, so a torn write shows up as a bad
//! checksum, a record running past the file's end, or bytes after the first zero length.
//!
//! The file is preallocated by writing zeros rather than with fallocate: an fallocated
//! extent is "unwritten", and the first write into it converts the extent, which is a
//! metadata change that fdatasync must then flush too. Over written zeros, fdatasync writes
//! only the data blocks of the record.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io, sync_dir, StoreError};

/// First bytes of every journal; a different format gets a different magic.
pub const MAGIC: &[u8; 8] = b"netdjnl1";
const HEADER: u64 = MAGIC.len() as u64;
const RECORD_HEADER: u64 = 8;

pub const FILE: &str = "journal";
/// The next journal while it is being made; renamed over [`FILE`] once it is durable.
pub const NEW_FILE: &str = "journal.new";

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Continues a CRC-32C over `data`; start with 0.
pub fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn record_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c(crc32c(0, &len), payload)
}

/// Bytes a record with `payload_len` bytes of payload takes in the file.
pub fn record_size(payload_len: usize) -> u64 {
    RECORD_HEADER + payload_len as u64
}

/// Size of a fresh journal that leaves room for at least `room` bytes of records.
pub fn size_for(segment: u64, room: u64) -> u64 {
    let need = (HEADER + room).div_ceil(4096) * 4096;
    segment.max(need)
}

/// What a journal file holds.
#[derive(Debug)]
pub struct Scan {
    /// Payloads of the valid records, in order, as ranges of the scanned bytes.
    pub records: Vec<Range<usize>>,
    /// Where the valid records end (where the next one would go).
    pub end: usize,
    /// Why the scan stopped before the zeros, if it did: a record that was being written
    /// when netd stopped. It was never acknowledged (the answer waits for its fdatasync).
    pub torn: Option<String>,
}

/// Reads the records of a journal's bytes. Fails only on a header that is not a journal's.
pub fn scan(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(format!(
            "not a netd journal (expected the header {:?})",
            String::from_utf8_lossy(MAGIC)
        ));
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    let torn = loop {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEADER as usize {
            break nonzero(rest, at, "a record header cut short by the file's end");
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len == 0 {
            // The end of the valid records. Anything but zeros after it is a later part of
            // a record whose first block never reached the disk.
            break nonzero(rest, at, "data after the last record");
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let Some(payload) = rest.get(8..8 + len) else {
            break Some(format!(
                "record at offset {at} claims {len} bytes, more than the file holds"
            ));
        };
        if record_crc(len_bytes, payload) != crc {
            break Some(format!("record at offset {at} fails its checksum"));
        }
        records.push(at + 8..at + 8 + len);
        at += 8 + len;
    };
    Ok(Scan {
        records,
        end: at,
        torn,
    })
}

fn nonzero(rest: &[u8], at: usize, what: &str) -> Option<String> {
    rest.iter()
        .any(|&b| b != 0)
        .then(|| format!("{what} at offset {at}"))
}

/// A journal open for appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    end: u64,
    size: u64,
}

impl Journal {
    /// Makes a fresh, empty journal of `size` bytes in `dir` and makes it durable: written
    /// as `journal.new` (header and zeros), fsynced, renamed over `journal`, then the
    /// directory fsynced. A crash before the rename leaves the old journal in place (and a
    /// `journal.new` that the next start removes); after it, the new one.
    pub fn create(dir: &Path, size: u64) -> Result<Journal, StoreError> {
        let tmp = dir.join(NEW_FILE);
        let path = dir.join(FILE);
        let mut file = super::create_private(&tmp)?;
        let zeros = vec![0u8; 64 * 1024];
        file.write_all(MAGIC).map_err(io("writing", &tmp))?;
        let mut left = size - HEADER;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n]).map_err(io("writing", &tmp))?;
            left -= n as u64;
        }
        file.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        sync_dir(&path)?;
        Ok(Journal {
            file,
            path,
            end: HEADER,
            size,
        })
    }

    /// Opens an existing journal whose valid records end at `end` (from [`scan`]) and
    /// which has only zeros after that.
    pub fn reopen(path: &Path, end: u64, size: u64) -> Result<Journal, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io("opening", path))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            end,
            size,
        })
    }

    /// Whether a record of `record_size` bytes fits after the last one.
    pub fn has_room(&self, record_size: u64) -> bool {
        self.end + record_size <= self.size
    }

    /// Appends one record and waits for fdatasync: when this returns Ok, the record
    /// survives a crash. The caller checked [`Self::has_room`].
    ///
    /// On failure the record's bytes are overwritten with zeros (best effort), so that a
    /// restart does not replay a change the caller reported as failed; the caller stops
    /// appending to this journal and starts a new one.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(payload.len())
            .expect("a record is far smaller than 4 GiB")
            .to_le_bytes();
        let mut rec = Vec::with_capacity(record_size(payload.len()) as usize);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&record_crc(len, payload).to_le_bytes());
        rec.extend_from_slice(payload);
        debug_assert!(self.has_room(rec.len() as u64));
        let written = self
            .file
            .write_all_at(&rec, self.end)
            .map_err(io("writing", &self.path))
            .and_then(|()| self.file.sync_data().map_err(io("syncing", &self.path)));
        if written.is_err() {
            let _ = self
                .file
                .write_all_at(&vec![0; rec.len()], self.end)
                .and_then(|()| self.file.sync_data());
        }
        written?;
        self.end += rec.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        // The check value of CRC-32C (RFC 3720, appendix B.4 lists the same polynomial).
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
        assert_eq!(crc32c(0, &[0u8; 32]), 0x8A91_36AA);
    }

    fn journal_bytes(payloads: &[&[u8]], size: usize) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for p in payloads {
            let len = (p.len() as u32).to_le_bytes();
            b.extend_from_slice(&len);
            b.extend_from_slice(&record_crc(len, p).to_le_bytes());
            b.extend_from_slice(p);
        }
        b.resize(size, 0);
        b
    }

    #[test]
    fn scan_stops_at_the_first_bad_record() {
        let b = journal_bytes(&[b"one", b"two"], 64);
        let s = scan(&b).unwrap();
        let got: Vec<&[u8]> = s.records.iter().map(|r| &b[r.clone()]).collect();
        assert_eq!(got, vec![&b"one"[..], b"two"]);
        assert_eq!(s.end, 8 + 11 + 11);
        assert!(s.torn.is_none());

        // A flipped payload byte in the second record: only the first counts.
        let mut bad = b.clone();
        bad[8 + 11 + 8] ^= 1;
        let s = scan(&bad).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(s.torn.unwrap().contains("checksum"));

        // A length running past the end of the file.
        let mut bad = b.clone();
        bad[8 + 11..8 + 11 + 4].copy_from_slice(&1000u32.to_le_bytes());
        let s = scan(&bad).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(s.torn.unwrap().contains("more than the file holds"));

        // The second record's header never reached the disk but its payload did.
        let mut bad = b.clone();
        bad[8 + 11..8 + 11 + 8].fill(0);
        let s = scan(&bad).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(s.torn.unwrap().contains("after the last record"));

        // A full file: the records end exactly at the end.
        let full = journal_bytes(&[b"one"], 8 + 11);
        let s = scan(&full).unwrap();
        assert_eq!((s.records.len(), s.end, s.torn), (1, 19, None));

        assert!(scan(b"netdjnl0\0\0\0\0").is_err());
        assert!(scan(b"").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size_for(1 << 20, 100), 1 << 20);
        assert_eq!(size_for(4096, 5000), 8192);
        assert_eq!(size_for(4096, 4096 - 8), 4096);
    }
}
