"""ROS-free processing of one stereo pair: rectify -> infer -> depth / points / colour."""
