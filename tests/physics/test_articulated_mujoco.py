"""Validation of the articulated simulator against MuJoCo (the optional `validation` extra).

Same MJCF file loaded by both, same integrator (semi-implicit Euler with implicit joint damping)
and step; float64. Stated tolerance: joint positions agree within 1e-6 (rad or m) over 3 s.
Measured (MuJoCo 4.0.0, this machine): double pendulum with motors 8.6e-15 rad, cart-pole with
damping, armature and a clamped motor 6.8e-14, the free/ball/hinge+slide model 6.4e-14 over 2 s,
the double pendulum with RK4 at 5 ms 6.0e-15.

Run with ``pytest -m validation tests/physics/test_articulated_mujoco.py`` (needs ``mujoco``;
without it these tests fail with an ImportError that says how to install it).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffvc.physics.mjcf import load_mjcf

pytestmark = pytest.mark.validation
ASSETS = Path(__import__("diffvc.physics", fromlist=["x"]).__file__).parent / "assets"
TOL = 1e-6


def _mujoco():
    try:
        import mujoco
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("these validation tests need MuJoCo: pip install 'diffvc[validation]'") from e
    return mujoco


def compare(source, q0, qd0, seconds, control_fn=None, from_string=False):
    """Roll out both simulators; returns (max |q_diffvc - q_mujoco|, diffvc model, final state)."""
    mujoco = _mujoco()
    model, info = load_mjcf(source, dtype=torch.float64, return_info=True)
    m = mujoco.MjModel.from_xml_string(source) if from_string else mujoco.MjModel.from_xml_path(str(source))
    assert m.opt.timestep == info["timestep"]
    d = mujoco.MjData(m)
    d.qpos[:] = q0
    d.qvel[:] = qd0
    st = model.initial_state(1, q=torch.tensor(np.array(d.qpos)), qd=torch.tensor(np.array(d.qvel)))
    dt = info["timestep"]
    worst = 0.0
    for k in range(int(round(seconds / dt))):
        u = None
        if control_fn is not None:
            d.ctrl[:] = control_fn(k * dt, m.nu)
            u = torch.tensor(np.array(d.ctrl))[None]
        mujoco.mj_step(m, d)
        st = model.step(st, dt, u)
        worst = max(worst, float(np.abs(st.q[0].numpy() - d.qpos).max()))
    return worst, model, st


def test_double_pendulum_matches_mujoco_over_3s_and_reports_energy_drift():
    err, model, _ = compare(ASSETS / "double_pendulum.xml", [1.0, -0.5], [0.3, -0.2], 3.0,
                            control_fn=lambda t, nu: 0.5 * np.sin(3 * t + np.arange(nu)))
    print(f"double pendulum: max |q - q_mujoco| over 3 s = {err:.3e} rad")
    assert err < TOL
    st = model.initial_state(1, q=torch.tensor([1.0, -0.5]))
    e0, worst = float(model.energy(st)), 0.0
    for k in range(3000):
        st = model.step(st, 1e-3)
        if k % 10 == 0:
            worst = max(worst, abs(float(model.energy(st)) - e0))
    print(f"double pendulum, no damping, dt 1e-3, 3 s: max |E - E0| = {worst:.4f} J (E0 = {e0:.3f} J)")
    assert worst < 0.2


def test_cartpole_matches_mujoco_over_3s_with_damping_armature_and_clamped_motor():
    err, _, _ = compare(ASSETS / "cartpole.xml", [0.1, 2.5], [0.3, -0.2], 3.0,
                        control_fn=lambda t, nu: np.full(nu, 1.5 * np.sin(2 * t)))
    print(f"cart-pole: max |q - q_mujoco| over 3 s = {err:.3e}")
    assert err < TOL


def test_rk4_double_pendulum_matches_mujoco_rk4():
    xml = (ASSETS / "double_pendulum.xml").read_text().replace('integrator="Euler"', 'integrator="RK4"')
    xml = xml.replace('timestep="0.001"', 'timestep="0.005"')
    err, model, _ = compare(xml, [1.0, -0.5], [0.3, -0.2], 3.0, from_string=True,
                            control_fn=lambda t, nu: 0.5 * np.sin(2 * t) * np.ones(nu))
    print(f"double pendulum, RK4, dt 5 ms: max |q - q_mujoco| over 3 s = {err:.3e} rad")
    assert model.integrator == "rk4" and err < TOL


MIXED = """
<mujoco model="mixed">
  <option timestep="0.001" gravity="0 0 -9.81"/>
  <worldbody>
    <body name="float" pos="1 0 1" euler="10 20 30">
      <freejoint/>
      <inertial pos="0.1 0.05 0" mass="2" diaginertia="0.1 0.2 0.3" euler="5 0 15"/>
      <body name="arm" pos="0.3 0 0">
        <joint type="ball" pos="0 0 0.05" damping="0.01"/>
        <geom type="box" size="0.1 0.05 0.02" pos="0.1 0 0" contype="0" conaffinity="0"/>
        <body name="tip" pos="0.2 0 0" quat="0.9 0.1 0.3 0.1">
          <joint type="hinge" axis="0 1 1" pos="0.02 0 0" armature="0.01" stiffness="2" ref="10"/>
          <joint type="slide" axis="1 0 0" damping="0.5"/>
          <geom type="capsule" fromto="0 0 0 0.2 0.1 0" size="0.03" contype="0" conaffinity="0"/>
        </body>
      </body>
    </body>
  </worldbody>
</mujoco>"""


def test_free_ball_and_multi_joint_bodies_match_mujoco():
    mujoco = _mujoco()
    m = mujoco.MjModel.from_xml_string(MIXED)
    q0 = np.array(m.qpos0)
    q0[7:11] = np.array([0.8, 0.2, -0.3, 0.4]) / np.linalg.norm([0.8, 0.2, -0.3, 0.4])
    q0[11] += 0.3
    qd0 = np.random.default_rng(0).normal(size=m.nv)
    err, _, _ = compare(MIXED, q0, qd0, 2.0, from_string=True)
    print(f"free + ball + hinge/slide: max |q - q_mujoco| over 2 s = {err:.3e}")
    assert err < TOL


def test_geom_derived_masses_and_inertias_match_mujoco():
    mujoco = _mujoco()
    for src in (ASSETS / "double_pendulum.xml", ASSETS / "cartpole.xml"):
        model = load_mjcf(src, dtype=torch.float64)
        m = mujoco.MjModel.from_xml_path(str(src))
        np.testing.assert_allclose(model.body_mass.numpy(), m.body_mass[1:], rtol=1e-7)
        np.testing.assert_allclose(np.sort(torch.linalg.eigvalsh(model.body_inertia).numpy(), 1),
                                   np.sort(m.body_inertia[1:], 1), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(model.body_com.numpy(), m.body_ipos[1:], atol=1e-12)
