//! The pod sandbox's process for runc pods (the pause image of the CRI
//! tests and benchmarks): it does nothing, forever. As PID 1 of its pod it
//! ignores signals it has no handler for; containerd ends it with SIGKILL.

fn main() {
    loop {
        std::thread::park();
    }
}
