"""tedloc-edge: TeD-Loc weakly supervised object localization, from training to a camera-rate runtime.

The core package is torch-free. `from tedloc_edge.runtime import Localizer` is the embeddable API.
"""

__version__ = "0.1.0"
