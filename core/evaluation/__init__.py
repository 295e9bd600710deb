"""Phase 11–13: what a finished LoRA does (strength grids, evidence beside them), what went wrong if
something did (diagnosis), and its place in the studio (registration)."""
