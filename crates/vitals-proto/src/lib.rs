//! vitals-proto: the sans-IO core of vitals (wire format, liveness, sessions). Filled in by a later change.
