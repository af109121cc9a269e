from int8wb.engine.installation import __version__
from int8wb.engine.link.client import EngineClient


def test_a_different_engine_release_is_named_and_the_same_one_is_not():
    client = EngineClient()
    client.engine_info = {"engine": __version__}
    assert client.version_mismatch is None
    client.engine_info = {"engine": "0.0.1"}
    assert (
        client.version_mismatch == f"the engine is version 0.0.1, this workbench is {__version__}: results may differ"
    )
