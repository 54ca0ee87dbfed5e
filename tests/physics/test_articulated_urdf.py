"""URDF loading: the same double pendulum as the MJCF asset gives the same trajectory; the
subset's errors name what is unsupported."""

from pathlib import Path

import pytest
import torch

from diffvc.physics import load_mjcf
from diffvc.physics.urdf import load_urdf

ASSETS = Path(__import__("diffvc.physics", fromlist=["x"]).__file__).parent / "assets"
F64 = torch.float64


def pendulum_urdf(m, I):
    ixx, iyy, izz = I
    link = lambda name, extra="": f"""
  <link name="{name}">
    <inertial><origin xyz="0 0 -0.25" rpy="0 0 0"/><mass value="{m!r}"/>
      <inertia ixx="{ixx!r}" ixy="0" ixz="0" iyy="{iyy!r}" iyz="0" izz="{izz!r}"/></inertial>
    <visual><geometry><box size="1 1 1"/></geometry></visual>
    <collision><origin xyz="0 0 -0.25" rpy="0 0 0"/><geometry><capsule radius="0.04" length="0.5"/></geometry></collision>
  </link>"""
    return f"""<robot name="double_pendulum">
  <link name="base"/>
  {link("link1")}{link("link2")}
  <joint name="hinge1" type="continuous"><parent link="base"/><child link="link1"/><axis xyz="0 1 0"/></joint>
  <joint name="hinge2" type="continuous"><parent link="link1"/><child link="link2"/>
    <origin xyz="0 0 -0.5" rpy="0 0 0"/><axis xyz="0 1 0"/></joint>
  <material name="grey"/>
</robot>"""


def test_urdf_double_pendulum_matches_the_mjcf_one():
    ref = load_mjcf(ASSETS / "double_pendulum.xml", dtype=F64)
    I = torch.linalg.eigvalsh(ref.body_inertia[0]).tolist()  # (small, large, large): z is the long axis
    model = load_urdf(pendulum_urdf(float(ref.body_mass[0]), (I[1], I[2], I[0])), dtype=F64)
    assert model.joint_type == ("revolute", "revolute") and model.num_bodies == 3
    assert model.point.shape[0] == 4  # two capsules, two end spheres each
    a = ref.initial_state(1, q=torch.tensor([1.0, -0.5]))
    b = model.initial_state(1, q=torch.tensor([1.0, -0.5]))
    for _ in range(300):
        a, b = ref.step(a, 1e-3), model.step(b, 1e-3)
    torch.testing.assert_close(a.q, b.q, rtol=1e-10, atol=1e-12)


def test_urdf_rpy_limits_floating_base_and_errors():
    xml = """<robot name="r"><link name="a"><inertial><mass value="1"/><inertia ixx="1" iyy="1" izz="1"/></inertial></link>
      <link name="b"><inertial><mass value="1"/><inertia ixx="1" iyy="1" izz="1"/></inertial></link>
      <joint name="j" type="prismatic"><parent link="a"/><child link="b"/><origin xyz="1 0 0" rpy="0 0 1.5707963267948966"/>
      <axis xyz="1 0 0"/><limit lower="-0.5" upper="0.5" effort="10" velocity="1"/><dynamics damping="0.3"/></joint></robot>"""
    model = load_urdf(xml, floating_base=True, dtype=F64)
    assert model.joint_type == ("free", "prismatic") and model.joint_limited == (False, True)
    assert model.nq == 8 and model.nv == 7 and float(model.dof_damping[-1]) == 0.3
    torch.testing.assert_close(model.body_quat[1], torch.tensor([2 ** -0.5, 0, 0, 2 ** -0.5], dtype=F64))
    with pytest.raises(ValueError, match="planar"):
        load_urdf(xml.replace('type="prismatic"', 'type="planar"'))
    with pytest.raises(ValueError, match="<mesh>"):
        load_urdf(xml.replace("</link>\n      <link", '<collision><geometry><mesh filename="x.stl"/></geometry></collision></link><link', 1))
    with pytest.raises(ValueError, match="<mimic>"):
        load_urdf(xml.replace("<axis", '<mimic joint="k"/><axis'))
    with pytest.raises(ValueError, match="root"):
        load_urdf('<robot name="r"><link name="a"/><link name="b"/></robot>')
