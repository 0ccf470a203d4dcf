"""aot_handbook (the package): the public names import from the top, lazily."""

import subprocess
import sys

import pytest


def test_public_classes_import_from_the_top():
    import aot_handbook
    from aot_handbook import AOTConfig, AOTTrainer, UnpairedAOTTrainer, aot_loss, fsd_diagnostics, train
    from aot_handbook.configs import AOTConfig as config_class
    from aot_handbook.trainers import AOTTrainer as trainer_class

    assert AOTConfig is config_class and AOTTrainer is trainer_class
    assert callable(aot_loss) and callable(fsd_diagnostics) and callable(train) and UnpairedAOTTrainer
    assert {"AOTConfig", "AOTTrainer", "aot_loss"} <= set(aot_handbook.__all__) <= set(dir(aot_handbook))


@pytest.mark.slow
def test_importing_the_loss_does_not_import_trl():
    code = "import sys, aot_handbook, aot_handbook.loss; print('trl' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unknown_name_is_an_attribute_error():
    import pytest

    import aot_handbook

    with pytest.raises(AttributeError, match="no attribute 'AOTTrainr'"):
        aot_handbook.AOTTrainr  # noqa: B018
