"""Fine-tuning FoundationStereo on your own data, with the paper's loss and self-curation.

API
---
::

    from foundation_stereo_ros.model import load_model
    from foundation_stereo_ros.training import (AugmentConfig, FineTuner, TrainConfig, open_dataset,
                                                sequence_loss, curate, CurationCriteria, write_curation)

    train = open_dataset("kitti:/data/kitti2015")          # or a folder, Scene Flow, Middlebury, FSD, a bag
    train, val = train.split(0.05)
    model = load_model("pretrained/11-33-40", device="cuda")
    FineTuner(model, train, val, TrainConfig(steps=5000), "runs/kitti").run()
    # runs/kitti/best/ is a published-format checkpoint for the node and foundation-stereo-infer

Modules: :mod:`.data` (samples, ground-truth readers, the dataset), :mod:`.layouts` (dataset
folders, ``open_dataset``), :mod:`.bag` (rosbag extraction), :mod:`.augment`, :mod:`.loss`,
:mod:`.metrics`, :mod:`.batches` (reproducible batches), :mod:`.inference` (the network on samples),
:mod:`.logs` (the run's CSV logs), :mod:`.trainer`, :mod:`.curation`, :mod:`.distributed` (torchrun:
the process group, timeouts, collectives).
PyTorch is imported by :mod:`.loss`, :mod:`.batches`, :mod:`.distributed`, :mod:`.inference` and
:mod:`.trainer` only.
"""
from .augment import AugmentConfig, StereoAugmentor
from .curation import CurationCriteria, CurationResult, SampleScore, curate, write_curation
from .data import SampleSpec, StereoDataset, StereoSample, read_name_list
from .layouts import LAYOUTS, DataOptions, detect_layout, open_dataset
from .loss import LossTerms, sequence_loss, upsample_init_disparity
from .inference import evaluate, predict
from .metrics import disparity_errors, mean_metrics
from .trainer import FineTuner, TrainConfig, freeze_modules, set_train_mode

__all__ = [
    "AugmentConfig", "CurationCriteria", "CurationResult", "DataOptions", "FineTuner", "LAYOUTS", "LossTerms",
    "SampleScore", "SampleSpec", "StereoAugmentor", "StereoDataset", "StereoSample", "TrainConfig", "curate",
    "detect_layout", "disparity_errors", "evaluate", "freeze_modules", "mean_metrics", "open_dataset", "predict",
    "read_name_list", "sequence_loss", "set_train_mode", "upsample_init_disparity", "write_curation",
]
