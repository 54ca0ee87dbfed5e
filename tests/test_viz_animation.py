import numpy as np
import pytest
from PIL import Image

from diffvc.viz import save_animation


def _frames(n=6, size=(48, 64)):
    out = []
    for k in range(n):
        f = np.full((*size, 3), 255, np.uint8)
        f[10:20, 5 + 6 * k: 12 + 6 * k] = (31, 119, 180)      # a moving blue box
        f[30:34, :] = 0                                      # a black line
        out.append(f)
    return out


@pytest.mark.parametrize("palette", ["per_frame", "shared"])
def test_gif_frames_read_back_with_their_colours_and_fps(tmp_path, palette):
    frames = _frames()
    path = save_animation(tmp_path / "a.gif", frames, fps=20, srgb=False, palette=palette)
    im = Image.open(path)
    assert im.n_frames == len(frames)
    for k in range(im.n_frames):
        im.seek(k)
        assert im.info["duration"] == 50                     # ms per frame at 20 fps
        back = np.asarray(im.convert("RGB")).astype(int)
        assert np.abs(back - frames[k]).max() <= 8, k


def test_bad_palette_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="palette"):
        save_animation(tmp_path / "a.gif", _frames(2), palette="global")
