"""What MONAI lacks for CT perfusion stroke segmentation, in layers that import downwards only:

* :mod:`scripts.io`: datalists, NIfTI and DICOM inputs and atomic outputs (the bottom layer);
* :mod:`scripts.perfusion`: perfusion maps from a 4D series, brain mask, the threshold rule, an independent phantom;
* :mod:`scripts.simulation`: the synthetic CTP cohort (tracer kinetics, anatomy, tissue fate);
* :mod:`scripts.learning`: networks, loss, metrics, training handlers, experiments and the loss search;
* :mod:`scripts.clinical`: inference on a patient, the clinical report and its DICOM SEG / SR;
* :mod:`scripts.node`: the DICOM node that receives studies from a PACS and sends the results back;
* :mod:`scripts.cli`: how the bundle's workflows end on a user error.
"""

import warnings

from . import cli, clinical, io, learning, node, perfusion, simulation

# MONAI's note that its GPU DICOM decoder (nvImageCodec) is absent: pydicom's decoders are used, and nothing a
# user can act on (a CPU machine has no such decoder); logging.conf silences its logger's copy of the same note
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin", category=UserWarning)
# MONAI 1.6's compute_hausdorff_distance passes get_mask_edges the argument MONAI itself deprecates: a FutureWarning
# at every evaluation that only MONAI can act on
warnings.filterwarnings(
    "ignore", message="monai.metrics.utils get_mask_edges:always_return_as_numpy", category=FutureWarning
)

# MONAI 1.6's RemoveSmallObjects passes scikit-image the `min_size` argument scikit-image 0.26 deprecates: only MONAI
# can act on it
warnings.filterwarnings("ignore", message="Parameter `min_size` is deprecated", category=FutureWarning)

__all__ = ["cli", "clinical", "io", "learning", "node", "perfusion", "simulation"]
