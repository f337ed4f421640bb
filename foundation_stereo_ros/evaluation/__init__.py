"""Offline evaluation of stereo depth: rosbag2 input/output, metrics and reports.

ROS-free (the bags are read and written with the `rosbags` package), so that a recording can be
evaluated on any machine. Frames go through the same :mod:`foundation_stereo_ros.pipeline` code as
the live node; only :mod:`.replay` needs rclpy, because it replays a bag through a running node.

Modules:
  metrics            pure NumPy metrics (EPE, bad-x, D1, AbsRel, delta<1.25, completeness, latency)
  calibration_files  stereo calibration files (OpenCV YAML, K.txt, a simple YAML) -> the
                     pipeline's StereoCalibration
  bag_io             rosbag2 (sqlite3, mcap) reading and writing (the messages of ros.messages)
  bag_pairing        stereo topics of a bag (one camera, or each camera's) and their pairing with the
                     node's synchroniser
  cameras            bags of several stereo cameras: each camera paired on its own, pairs batched
  report             per-frame CSV, summary JSON, Markdown/HTML report with pictures
  runner             runs a bag through one or more backends and collects the numbers
  replay             publishes a bag to the live node with its recorded timing and collects outputs
"""
