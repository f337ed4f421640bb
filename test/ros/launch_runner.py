"""Run one launch file as ``ros2 launch`` does: ``python launch_runner.py FILE [name:=value ...]``.

ros2launch is not on PyPI either, so the tests use this: a ``LaunchService`` that includes the file
with the given arguments and returns its exit code. SIGINT (Ctrl-C) makes the service shut down and
pass SIGINT on to its processes, as ``ros2 launch`` does.
"""
import sys

from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource


def main(argv) -> int:
    path, arguments = argv[0], argv[1:]
    pairs = []
    for item in arguments:
        name, sep, value = item.partition(":=")
        if not sep:
            print(f"launch argument {item!r} must read name:=value", file=sys.stderr)
            return 2
        pairs.append((name, value))
    service = LaunchService(argv=arguments, noninteractive=True)
    service.include_launch_description(LaunchDescription([
        IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=pairs)]))
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
