"""The papers' spiking neurons on SpikingJelly 2.0, and the integer <-> spike-driven switch.

>>> import neurons
>>> lif = neurons.ILIF()                  # SpikeYOLO's I-LIF as released (D=4, decay 0.25)
>>> conv = neurons.SpikeConv2d(8, 16, 3, source=lif)
>>> neurons.to_spike_driven(model)        # every synapse now runs on binary events
>>> neurons.check_equivalence(model, x)   # largest difference between the two modes
"""

from .errors import NeuronError
from .modes import Equivalence, auto_reset, check_equivalence, mode_of, to_integer, to_spike_driven
from .nodes import ILIF, NILIF, BinaryLIF, ILIFGen1, Levels, MultiSpike, Ternary, TopKSpike, is_count_neuron, ternary_counts
from .synapse import SpikeConv1d, SpikeConv2d, SpikeConv3d, SpikeLinear, SpikeProduct, Synapse, expand_events

__all__ = [
    "ILIF", "ILIFGen1", "NILIF", "MultiSpike", "Ternary", "BinaryLIF", "TopKSpike", "Levels", "is_count_neuron", "ternary_counts", "NeuronError",
    "SpikeConv1d", "SpikeConv2d", "SpikeConv3d", "SpikeLinear", "SpikeProduct", "Synapse", "expand_events",
    "to_spike_driven", "to_integer", "mode_of", "check_equivalence", "auto_reset", "Equivalence",
]
