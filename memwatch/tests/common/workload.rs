//! Workloads in processes forked from the test: single-threaded, so only the
//! workload's own work is attributed to its pid, and alive until the test says so, so
//! its comm and cgroup can be read at scrape time. After the fork the child only makes
//! raw syscalls (no allocation), as a forked child of a threaded process must.

/// The child's end of the control pipes.
pub struct Ctl {
    ctl: i32,
    rep: i32,
}

impl Ctl {
    /// Tells the test something (one byte).
    pub fn report(&self, b: u8) {
        write_byte(self.rep, b);
    }

    /// Tells the test a number.
    pub fn report_u64(&self, v: u64) {
        let b = v.to_le_bytes();
        // SAFETY: writing 8 bytes from a valid buffer (atomic for pipes).
        unsafe { libc::write(self.rep, b.as_ptr().cast(), 8) };
    }

    /// Waits for the test's next command (one byte; 0 if the test went away).
    pub fn wait(&self) -> u8 {
        read_byte(self.ctl)
    }
}

/// A running workload process.
pub struct Workload {
    pub pid: i32,
    ctl: i32,
    rep: i32,
}

pub fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

pub fn read_byte(fd: i32) -> u8 {
    let mut b = 0u8;
    // SAFETY: reading one byte into a valid buffer.
    let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
    if n == 1 {
        b
    } else {
        0
    }
}

pub fn write_byte(fd: i32, b: u8) {
    // SAFETY: writing one byte from a valid buffer.
    unsafe { libc::write(fd, (&raw const b).cast(), 1) };
}

impl Workload {
    /// Forks a process that runs `body`, then waits for `finish`. `body` returns the
    /// exit code it wants (0 = fine).
    pub fn spawn(body: fn(&Ctl) -> i32) -> Self {
        let (ctl_r, ctl_w) = pipe();
        let (rep_r, rep_w) = pipe();
        // SAFETY: the child runs `body` (raw syscalls only) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: closing the parent's ends in the child.
            unsafe {
                libc::close(ctl_w);
                libc::close(rep_r);
            }
            let ctl = Ctl {
                ctl: ctl_r,
                rep: rep_w,
            };
            let code = body(&ctl);
            ctl.report(b'D');
            ctl.wait();
            // SAFETY: leaving the forked child without running the parent's atexit work.
            unsafe { libc::_exit(code) }
        }
        // SAFETY: closing the child's ends in the parent.
        unsafe {
            libc::close(ctl_r);
            libc::close(rep_w);
        }
        Self {
            pid,
            ctl: ctl_w,
            rep: rep_r,
        }
    }

    /// Waits for the workload to report `b`.
    pub fn expect(&self, b: u8) {
        let got = read_byte(self.rep);
        assert_eq!(
            got as char, b as char,
            "workload reported {got} instead of {b}"
        );
    }

    /// Reads a number the workload reported.
    pub fn read_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid buffer.
        let n = unsafe { libc::read(self.rep, b.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8, "workload did not report a number");
        u64::from_le_bytes(b)
    }

    /// Sends a command.
    pub fn send(&self, b: u8) {
        write_byte(self.ctl, b);
    }

    /// Waits until `body` returned (the process stays alive).
    pub fn wait_done(&self) {
        self.expect(b'D');
    }

    /// Lets the workload exit, reaps it and checks its exit code.
    pub fn finish(self) {
        self.send(b'X');
        let mut status = 0;
        // SAFETY: reaping the child we forked.
        unsafe {
            libc::waitpid(self.pid, &mut status, 0);
            libc::close(self.ctl);
            libc::close(self.rep);
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "workload failed: status {status:#x}"
        );
    }
}

/// Maps `pages` private anonymous pages, not yet touched, 4 KiB pages only (a THP would
/// turn N faults into N/512); None if the mapping fails. Raw syscalls only, for use in
/// a forked workload.
pub fn map_fresh(pages: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping of our own.
    unsafe {
        let len = pages * libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        Some(p.cast())
    }
}

/// `map_fresh(pages)`, with one byte written to each page, so they are present.
pub fn map_populated(pages: usize) -> Option<*mut u8> {
    let p = map_fresh(pages)?;
    // SAFETY: writes within the mapping just made.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        for i in 0..pages {
            std::ptr::write_volatile(p.add(i * page), 1);
        }
    }
    Some(p)
}
