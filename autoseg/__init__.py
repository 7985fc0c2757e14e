"""autoseg: self-configuring segmentation of liver, hepatic vessels and liver tumours in CT."""
import os as _os

__version__ = "0.1.0"

# PyTorch's CPU kernels run in OpenMP parallel regions whose threads, by default, spin at every
# barrier waiting for the others. When any other process wants a core (an augmentation worker, a
# second job), a spinning thread holds it while the thread it waits for is descheduled: on the 2-core
# machine one busy neighbour made a 0.8 s training step take 12 s with 2 threads. Passive waiting
# sleeps instead (0.9 s in the same situation; the same speed on an idle machine). The variable
# is read when PyTorch loads its OpenMP runtime, so it is set here, before autoseg imports torch;
# a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
