//! `memcpy` and `memmove` for the static x86_64 musl build (the amd64 package's binary).
//!
//! musl's x86_64 `memcpy` is a byte loop to 8-byte alignment and then `rep movsq`: tens of
//! cycles before the first byte moves, whatever the length. The message path makes four or five
//! short copies per message (the topic and payload into the pool, both into a subscriber's
//! output), so in the shipped static binary `memcpy` took a quarter of the broker's time under
//! QoS 1 fan-in (perf), where glibc's took 2%. These routines have the shape glibc's and the
//! Linux kernel's short copies have: up to 128 bytes, two loads and two stores of the widest
//! size that fits (they may overlap in the middle), with every load done before any store, so
//! the same code is a correct `memmove`; longer copies are `rep movsb`, which CPUs with ERMS or
//! FSRM (Intel since 2012, AMD Zen) run at full speed.
//!
//! There is no loop anywhere on purpose: LLVM turns a byte-copying loop into a call to
//! `memcpy`, which here would be this function calling itself.
//!
//! The symbols are exported only in the musl build, where the linker then never pulls musl's
//! own `memcpy.o`/`memmove.o` out of `libc.a` (an archive member is linked only for a symbol
//! still undefined). Everywhere else the routines are compiled under their own names for the
//! unit tests below. The ARM packages keep musl's routines: on arm and aarch64 they are
//! size-class assembly, not `rep`-style loops.

use core::arch::asm;
use core::ptr::{read_unaligned, write_unaligned};

/// Copies up to 128 bytes between possibly overlapping regions: everything is loaded into
/// registers before anything is stored.
#[inline(always)]
unsafe fn copy_short(d: *mut u8, s: *const u8, n: usize) {
    macro_rules! two {
        ($t:ty) => {{
            let size = core::mem::size_of::<$t>();
            let head = read_unaligned(s as *const $t);
            let tail = read_unaligned(s.add(n - size) as *const $t);
            write_unaligned(d as *mut $t, head);
            write_unaligned(d.add(n - size) as *mut $t, tail);
        }};
    }
    if n >= 32 {
        copy_lanes(d, s, n);
    } else if n >= 16 {
        two!(u128)
    } else if n >= 8 {
        two!(u64)
    } else if n >= 4 {
        two!(u32)
    } else if n >= 2 {
        two!(u16)
    } else if n == 1 {
        *d = *s;
    }
}

/// 32 to 128 bytes: two or four 16-byte lanes from the start and as many from the end, each
/// lane a register of its own (an array value would go through the stack).
#[inline(always)]
unsafe fn copy_lanes(d: *mut u8, s: *const u8, n: usize) {
    let lane = |p: *const u8, i: usize| read_unaligned(p.add(16 * i) as *const u128);
    let put = |p: *mut u8, i: usize, v: u128| write_unaligned(p.add(16 * i) as *mut u128, v);
    if n >= 64 {
        let (s_end, d_end) = (s.add(n - 64), d.add(n - 64));
        let (h0, h1, h2, h3) = (lane(s, 0), lane(s, 1), lane(s, 2), lane(s, 3));
        let (t0, t1, t2, t3) = (
            lane(s_end, 0),
            lane(s_end, 1),
            lane(s_end, 2),
            lane(s_end, 3),
        );
        put(d, 0, h0);
        put(d, 1, h1);
        put(d, 2, h2);
        put(d, 3, h3);
        put(d_end, 0, t0);
        put(d_end, 1, t1);
        put(d_end, 2, t2);
        put(d_end, 3, t3);
    } else {
        let (s_end, d_end) = (s.add(n - 32), d.add(n - 32));
        let (h0, h1, t0, t1) = (lane(s, 0), lane(s, 1), lane(s_end, 0), lane(s_end, 1));
        put(d, 0, h0);
        put(d, 1, h1);
        put(d_end, 0, t0);
        put(d_end, 1, t1);
    }
}

/// `rep movsb` forwards: right for any length, and for overlap where `d` is below `s`.
#[inline(always)]
unsafe fn movsb_forward(d: *mut u8, s: *const u8, n: usize) {
    asm!(
        "rep movsb",
        inout("rcx") n => _,
        inout("rdi") d => _,
        inout("rsi") s => _,
        options(nostack, preserves_flags)
    );
}

/// `rep movsb` backwards (direction flag set for the copy, cleared after as the ABI wants):
/// only for an overlap where `d` is above `s`, which the broker's buffers hardly ever have.
#[inline(always)]
unsafe fn movsb_backward(d: *mut u8, s: *const u8, n: usize) {
    asm!(
        "std",
        "rep movsb",
        "cld",
        inout("rcx") n => _,
        inout("rdi") d.add(n - 1) => _,
        inout("rsi") s.add(n - 1) => _,
        options(nostack)
    );
}

/// # Safety
/// As C's `memcpy`: `d` and `s` valid for `n` bytes, not overlapping.
#[cfg_attr(all(target_env = "musl", not(test)), no_mangle)]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if n <= 128 {
        copy_short(d, s, n);
    } else {
        movsb_forward(d, s, n);
    }
    d
}

/// # Safety
/// As C's `memmove`: `d` and `s` valid for `n` bytes; they may overlap.
#[cfg_attr(all(target_env = "musl", not(test)), no_mangle)]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if n <= 128 {
        copy_short(d, s, n);
    } else if (d as usize).wrapping_sub(s as usize) >= n {
        // `d` below `s`, or far enough above it: a forward copy never reads what it wrote.
        movsb_forward(d, s, n);
    } else {
        movsb_backward(d, s, n);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::{memcpy, memmove};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn memcpy_copies_every_length_at_every_alignment() {
        for n in 0..600 {
            for (src_off, dst_off) in [(0, 0), (1, 0), (0, 3), (5, 9), (15, 1)] {
                let src = pattern(n + 32);
                let mut dst = vec![0xEEu8; n + 32];
                unsafe { memcpy(dst.as_mut_ptr().add(dst_off), src.as_ptr().add(src_off), n) };
                assert_eq!(
                    &dst[dst_off..dst_off + n],
                    &src[src_off..src_off + n],
                    "n={n}"
                );
                // Not a byte outside the destination is touched.
                assert!(dst[..dst_off].iter().all(|&b| b == 0xEE), "n={n}");
                assert!(dst[dst_off + n..].iter().all(|&b| b == 0xEE), "n={n}");
            }
        }
    }

    #[test]
    fn memmove_is_right_for_every_overlap() {
        for n in 0..400 {
            for shift in [1usize, 2, 7, 8, 15, 16, 31, 64, 100, 129, 300] {
                // Destination above the source, then below it, in one buffer.
                let mut up = pattern(n + shift);
                let mut want = up.clone();
                want.copy_within(0..n, shift);
                unsafe { memmove(up.as_mut_ptr().add(shift), up.as_ptr(), n) };
                assert_eq!(up, want, "up n={n} shift={shift}");

                let mut down = pattern(n + shift);
                let mut want = down.clone();
                want.copy_within(shift..shift + n, 0);
                unsafe { memmove(down.as_mut_ptr(), down.as_ptr().add(shift), n) };
                assert_eq!(down, want, "down n={n} shift={shift}");
            }
        }
    }
}
