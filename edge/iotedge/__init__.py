"""The Azure IoT Edge control plane: module lifecycle, twin, direct methods, manifest."""

__all__: list[str] = []
