"""ament_python package that also installs with plain pip into a virtual environment."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "foundation_stereo_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        # The Fast DDS profile is package data (the node finds it beside ros/dds.py); installed
        # here too, for camera drivers started without the package's launch files.
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + [f"{PACKAGE}/ros/fastdds_large_data.xml"]),
    ],
    package_data={PACKAGE: ["ros/fastdds_large_data.xml"]},
    python_requires=">=3.10",
    install_requires=["numpy", "pyyaml", "opencv-python-headless", "setuptools"],
    extras_require={
        # torch/torchvision are installed by scripts/setup_env.sh (pinned per platform) or by
        # JetPack on a Jetson, so they are not forced here.
        "model": ["timm>=1.0"],
        "test": ["pytest", "hypothesis"],
    },
    zip_safe=False,  # the node reads its Fast DDS profile by path
    maintainer="foundation_stereo_ros maintainers",
    description="Zero-shot stereo depth for ROS 2 with FoundationStereo",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "foundation-stereo-infer = foundation_stereo_ros.tools.infer:main",
            "stereo_depth_node = foundation_stereo_ros.ros.stereo_depth_node:main",
            "foundation-stereo-eval = foundation_stereo_ros.tools.evaluate:main",
            "foundation-stereo-make-bag = foundation_stereo_ros.tools.make_bag:main",
            "foundation-stereo-demo = foundation_stereo_ros.tools.main_job:main",
            "foundation-stereo-benchmark = foundation_stereo_ros.tools.benchmark:main",
            "foundation-stereo-memory = foundation_stereo_ros.tools.memory_fit:main",
            "foundation-stereo-export = foundation_stereo_ros.tools.export_onnx:main",
            "foundation-stereo-finetune = foundation_stereo_ros.tools.finetune:main",
            "foundation-stereo-curate = foundation_stereo_ros.tools.curate:main",
        ],
    },
)
