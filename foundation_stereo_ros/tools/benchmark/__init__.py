"""foundation-stereo-benchmark: where the time goes, per network stage and per node stage.

For every combination of variant, resolution, GRU iterations and execution mode it reports
the median and p95 latency of the network, its throughput, its peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: peak resident set size sampled during the runs), the
largest difference of its disparity from the eager fp32 path on the same input, its work in
floating-point operations (PyTorch's FLOP counter on a simulated CUDA device,
``analysis.simulated.count_flops``) and, where the GPU's peak dense bf16 rate is known or given
(``--peak-tflops``), how far the median is from that FLOP floor; and for eager
modes the time of each stage (monocular branch, CNN features, cost volume, aggregation, context,
geometry volume, each GRU iteration, upsampling; CUDA events on a GPU). The node's own work per
camera pair (image conversion, rectification, upload and download, depth, points, message
building) is timed per resolution through the node's real code with the network replaced by a
stored disparity, with the geometry on the host and on the network's device, and related to the
network's time.

``--cameras 1,2,4`` instead measures several cameras on one network: pairs per second batched
against one pair at a time, and the memory of one node serving N cameras against N nodes.

Weights are random unless ``--checkpoint`` is given: timing does not depend on them. Results are
printed as tables and, with ``--json``, written after every configuration, so a run that is cut
short keeps what it measured.

Modules, each imported only by those after it:
  stats, memory   summary statistics of samples; peak resident set size
  modes, machine  presets and mode names; the machine and its GPU's peak rate
  node_stages     the node's own per-pair work, timed through its code with a stored disparity
  live_node       the live node's frame rate with the network replaced by a wait (rclpy)
  network         one network configuration timed: latency, memory, stages
  flops, tables   FLOP counts and the printed tables
  cameras         several cameras on one network (also the memory worker's entry point; not
                  imported here, so ``python -m`` runs it cleanly)
  cli             the command line (``python -m foundation_stereo_ros.tools.benchmark``)
"""
from .cli import build_parser, main
from .flops import add_flops, format_flops
from .live_node import NodeRateOptions, format_rows, measure_node_rate, run_node_rates
from .machine import PEAK_BF16_TFLOPS, machine_info, peak_tflops_for
from .memory import RssPeak
from .modes import PRESETS, parse_mode
from .network import NetworkConfig, RunOptions, build_model, run_config
from .node_stages import NODE_STAGES, stored_disparity_processor, time_node_stages
from .stats import summarize
from .tables import format_tables

__all__ = ["NODE_STAGES", "PEAK_BF16_TFLOPS", "PRESETS", "NetworkConfig", "NodeRateOptions", "RssPeak",
           "RunOptions", "add_flops", "build_model", "build_parser", "format_flops", "format_rows",
           "format_tables", "machine_info", "main", "measure_node_rate", "parse_mode", "peak_tflops_for",
           "run_config", "run_node_rates", "stored_disparity_processor", "summarize", "time_node_stages"]
