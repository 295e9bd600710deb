"""The built-in LoRA trainer (diffusers + peft) and the tiny offline model it is tested on.

``builtin`` trains a real LoRA on SD 1.5 or SDXL and saves it with kohya-style keys; ``tiny`` writes a
small random-weight pipeline so tests, the demo and Gate 4 can train for real without a download.
"""

import os

# The libraries' own chatter (optional-dependency notices, progress bars) stays out of what the artist
# reads: loratrain reports progress itself. Set before any submodule imports transformers or diffusers.
for _name, _value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                      ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TQDM_DISABLE", "1")):  # fmt: skip
    os.environ.setdefault(_name, _value)
