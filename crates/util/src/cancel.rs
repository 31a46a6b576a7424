//! Whether the work running on this thread is still wanted. A model engine runs one batch at
//! a time on its own thread for callers that may give up (a deadline, a closed connection);
//! long batches — generation, many scoring passes — ask [`abandoned`] between their steps and
//! stop early when nobody is left to read the result. The engine installs the question with
//! [`with_probe`]; outside it the answer is always "still wanted".

use std::cell::RefCell;

type Probe = Box<dyn Fn() -> bool>;

thread_local! {
    static STILL_WANTED: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

/// Clears the probe when `with_probe` ends, even by a panic.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        STILL_WANTED.with(|p| p.borrow_mut().take());
    }
}

/// Runs `f` on this thread with `still_wanted` answering whether its result is still wanted.
pub fn with_probe<R>(still_wanted: impl Fn() -> bool + 'static, f: impl FnOnce() -> R) -> R {
    STILL_WANTED.with(|p| *p.borrow_mut() = Some(Box::new(still_wanted)));
    let _reset = Reset;
    f()
}

/// True when the work running on this thread (inside [`with_probe`]) is wanted by nobody.
pub fn abandoned() -> bool {
    STILL_WANTED.with(|p| p.borrow().as_ref().is_some_and(|wanted| !wanted()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn the_probe_answers_inside_and_is_gone_after() {
        assert!(!abandoned(), "no probe: wanted");
        let wanted = Rc::new(Cell::new(true));
        let w = wanted.clone();
        let seen = with_probe(
            move || w.get(),
            || {
                let before = abandoned();
                wanted.set(false);
                (before, abandoned())
            },
        );
        assert_eq!(seen, (false, true));
        assert!(!abandoned(), "the probe is cleared");
        let _ = std::panic::catch_unwind(|| with_probe(|| false, || panic!("boom")));
        assert!(!abandoned(), "cleared after a panic too");
    }
}
