"""ROS-free OpenMask3D core: scene folders, proposals, visibility, views, 2D refinement, crops,
encoders, per-instance features, map storage and text queries."""
