"""The built-in LoRA trainer (diffusers + peft) and the tiny offline model it is tested on.

``builtin`` trains a real LoRA on SD 1.5 or SDXL and saves it with kohya-style keys; ``tiny`` writes a
small random-weight pipeline so tests, the demo and Gate 4 can train for real without a download.
"""
