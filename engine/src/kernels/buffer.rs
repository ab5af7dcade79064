//! The memory a [`super::QuantWeight`] reads: its own `Vec`, or a read-only slice of a memory-mapped
//! prepared-weights file (`formats/prepared.rs`), whose pages the kernel's page cache shares between
//! every backend and worker that maps the same file. The kernels see a plain slice either way.

use std::sync::Arc;

/// The element types a buffer holds: plain little-endian integers with no invalid bit patterns.
pub trait Element: Copy + Default + Send + Sync + 'static {}
impl Element for u8 {}
impl Element for u16 {}

#[derive(Clone)]
pub enum Buffer<T: Element> {
    Owned(Vec<T>),
    /// `len` elements at byte `offset` of `map` (checked in bounds and aligned by [`Buffer::mapped`]).
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: Element> Buffer<T> {
    /// `len` elements at byte `offset` of `map`; None when they do not lie inside it or are misaligned.
    pub fn mapped(map: &Arc<memmap2::Mmap>, offset: usize, len: usize) -> Option<Self> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        let aligned = (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        (end <= map.len() && aligned).then(|| Buffer::Mapped { map: map.clone(), offset, len })
    }

    /// The elements, writable: a mapped buffer becomes a private copy first (weights are only written
    /// while they are built, before anything maps them).
    pub fn make_mut(&mut self) -> &mut [T] {
        if let Buffer::Mapped { .. } = self {
            *self = Buffer::Owned(self.to_vec());
        }
        match self {
            Buffer::Owned(v) => v,
            Buffer::Mapped { .. } => unreachable!("just copied"),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Buffer::Mapped { .. })
    }
}

impl<T: Element> std::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buffer::Owned(v) => v,
            // SAFETY: `mapped` checked that the range lies inside the map and is aligned for T, and T
            // (u8/u16) has no invalid bit patterns. The map is read-only and lives as long as this
            // buffer (the Arc). The file behind it is never written in place: prepared files are
            // written whole under another name and renamed over the old one, so a mapped file's
            // pages never change under a reader (prepared.rs).
            Buffer::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const T, *len)
            },
        }
    }
}

impl<T: Element> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Self {
        Buffer::Owned(v)
    }
}
