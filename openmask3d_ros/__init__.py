"""openmask3d_ros: open-vocabulary 3D instance segmentation (OpenMask3D) for ROS 2.

``openmask3d_ros.core`` is the ROS-free library; ``openmask3d_ros.ros`` adapts it to rclpy.
The generated interfaces (``openmask3d_ros.msg`` / ``openmask3d_ros.srv``) may live in another
site-packages directory (installed by the interface build), so the package path is extended.
"""
import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)
__version__ = "0.1.0"
