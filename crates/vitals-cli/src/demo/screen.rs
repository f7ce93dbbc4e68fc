//! The demo's output: on a terminal, a live block redrawn in place with notes scrolling above it; when
//! stdout is not a terminal (a pipe, a file, CI), plain lines — one status line per tick and the notes.

use std::io::{IsTerminal, Write};

/// Writes the demo's notes and live status to stdout.
pub(crate) struct Screen {
    tty: bool,
    /// Lines of the live block currently drawn (terminal only).
    drawn: usize,
}

impl Screen {
    /// A screen on stdout, live when stdout is a terminal.
    pub(crate) fn new() -> Screen {
        Screen {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    /// Whether the live block is redrawn in place.
    pub(crate) fn is_live(&self) -> bool {
        self.tty
    }

    /// Erases the live block (terminal only).
    fn erase(&mut self, out: &mut impl Write) {
        if self.tty && self.drawn > 0 {
            // Up to the block's first line, then clear to the end of the screen.
            let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// A permanent line (stays above the live block).
    pub(crate) fn note(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Redraws the live block (terminal) or prints its one-line form (not a terminal).
    pub(crate) fn status(&mut self, block: &[String], line: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            self.erase(&mut out);
            for l in block {
                let _ = writeln!(out, "{l}");
            }
            self.drawn = block.len();
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// Leaves the last live block on screen and stops redrawing over it.
    pub(crate) fn keep(&mut self) {
        self.drawn = 0;
    }
}
