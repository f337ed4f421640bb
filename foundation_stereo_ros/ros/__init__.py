"""rclpy node, message conversions, synchronisation, QoS and parameters."""
