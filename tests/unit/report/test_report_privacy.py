"""The report's privacy sentence, and its caveat when the noise is not secret."""

from __future__ import annotations

import pytest

from fedgen.report.html import _privacy_section

SUMMARY = {"epsilon": 9.99, "delta": 1e-5, "privacy_unit": "client", "accountant": "prv"}


@pytest.mark.parametrize("noise_seed", ["secret", "root"])
def test_root_seeded_noise_limits_the_guarantee_to_those_without_the_config(noise_seed):
    # Execute
    html = _privacy_section({**SUMMARY, "noise_seed": noise_seed})
    # Assert: the guarantee is stated either way; the caveat only for root-seeded noise
    assert "differentially private for a whole client" in html
    assert "Frechet distance, KID and precision/recall" in html  # not covered: said so
    assert ("anyone holding config.yaml can regenerate the noise" in html) == (noise_seed == "root")
