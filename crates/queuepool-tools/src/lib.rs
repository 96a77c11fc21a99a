//! queuepool's tools (work in progress).
