"""fastmsg.build makes the same messages as the generated constructors (what goes on the wire is
identical), and a misspelt field is an error, not a silently dropped value."""
import array

import pytest
from geometry_msgs.msg import Point
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from openmask3d_ros.msg import ObjectInstance
from openmask3d_ros.ros.fastmsg import build


def test_built_messages_equal_constructed_ones():
    header = Header(frame_id="map")
    cases = [
        (Marker, dict(header=header, ns="a", id=3, type=Marker.CUBE, text="mug",
                      points=[Point(x=1.0, y=2.0, z=3.0)])),
        (PointCloud2, dict(header=header, height=1, width=2, point_step=12, row_step=24,
                           data=array.array("B", bytes(range(24))), is_dense=True)),
        (ObjectInstance, dict(header=header, id=7, score=0.25, label="a mug",
                              centroid=Point(x=0.5), num_points=12,
                              point_indices=array.array("I", [1, 2, 3]))),
        (Marker, {}),                                    # nothing given: all defaults
    ]
    for cls, fields in cases:
        built, made = build(cls, **fields), cls(**fields)
        assert built == made, cls.__name__
        # on the wire: what arrives is the constructed message (the raw bytes are not
        # compared: CDR alignment padding, e.g. after PointCloud2.is_bigendian, is not
        # initialised by the serializer, so two equal messages may differ there)
        assert deserialize_message(serialize_message(built), cls) == made, cls.__name__


def test_defaults_are_not_shared_with_given_values():
    a = build(Point, x=1.0)
    b = build(Point)
    assert (a.x, a.y, b.x) == (1.0, 0.0, 0.0)


def test_a_misspelt_field_is_refused_with_its_name():
    with pytest.raises(AttributeError, match="centriod"):
        build(ObjectInstance, id=1, centriod=Point())
