from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MapKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_KIND_ANY: _ClassVar[MapKind]
    MAP_KIND_LINEAR: _ClassVar[MapKind]
    MAP_KIND_ROTATION: _ClassVar[MapKind]
    MAP_KIND_HUB: _ClassVar[MapKind]
    MAP_KIND_MLP: _ClassVar[MapKind]
    MAP_KIND_KERNEL: _ClassVar[MapKind]
    MAP_KIND_TUNED: _ClassVar[MapKind]
    MAP_KIND_ENSEMBLE: _ClassVar[MapKind]
MAP_KIND_ANY: MapKind
MAP_KIND_LINEAR: MapKind
MAP_KIND_ROTATION: MapKind
MAP_KIND_HUB: MapKind
MAP_KIND_MLP: MapKind
MAP_KIND_KERNEL: MapKind
MAP_KIND_TUNED: MapKind
MAP_KIND_ENSEMBLE: MapKind

class Embeddings(_message.Message):
    __slots__ = ("rows", "dim", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class MapRef(_message.Message):
    __slots__ = ("map_id", "version", "sha256", "kind")
    MAP_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    map_id: str
    version: int
    sha256: str
    kind: str
    def __init__(self, map_id: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("source_model", "target_model", "kind", "embeddings", "request_id")
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source_model: str
    target_model: str
    kind: MapKind
    embeddings: Embeddings
    request_id: str
    def __init__(self, source_model: _Optional[str] = ..., target_model: _Optional[str] = ..., kind: _Optional[_Union[MapKind, str]] = ..., embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("embeddings", "map", "request_id")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    embeddings: Embeddings
    map: MapRef
    request_id: str
    def __init__(self, embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., map: _Optional[_Union[MapRef, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model_a", "a", "model_b", "b", "kind", "far")
    MODEL_A_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FAR_FIELD_NUMBER: _ClassVar[int]
    model_a: str
    a: Embeddings
    model_b: str
    b: Embeddings
    kind: MapKind
    far: float
    def __init__(self, model_a: _Optional[str] = ..., a: _Optional[_Union[Embeddings, _Mapping]] = ..., model_b: _Optional[str] = ..., b: _Optional[_Union[Embeddings, _Mapping]] = ..., kind: _Optional[_Union[MapKind, str]] = ..., far: _Optional[float] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("scores", "space", "map", "same", "threshold", "scoring", "reverse_map")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    SAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    REVERSE_MAP_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    space: str
    map: MapRef
    same: _containers.RepeatedScalarFieldContainer[bool]
    threshold: float
    scoring: str
    reverse_map: MapRef
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., space: _Optional[str] = ..., map: _Optional[_Union[MapRef, _Mapping]] = ..., same: _Optional[_Iterable[bool]] = ..., threshold: _Optional[float] = ..., scoring: _Optional[str] = ..., reverse_map: _Optional[_Union[MapRef, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "failed")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    embeddings: Embeddings
    failed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., failed: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class MapInfo(_message.Message):
    __slots__ = ("ref", "source_model", "target_model", "d_source", "d_target", "created", "active", "metadata_json", "hub_models")
    REF_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    D_SOURCE_FIELD_NUMBER: _ClassVar[int]
    D_TARGET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    HUB_MODELS_FIELD_NUMBER: _ClassVar[int]
    ref: MapRef
    source_model: str
    target_model: str
    d_source: int
    d_target: int
    created: str
    active: bool
    metadata_json: str
    hub_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[_Union[MapRef, _Mapping]] = ..., source_model: _Optional[str] = ..., target_model: _Optional[str] = ..., d_source: _Optional[int] = ..., d_target: _Optional[int] = ..., created: _Optional[str] = ..., active: _Optional[bool] = ..., metadata_json: _Optional[str] = ..., hub_models: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMappingsRequest(_message.Message):
    __slots__ = ("source_model", "target_model", "all_versions")
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    source_model: str
    target_model: str
    all_versions: bool
    def __init__(self, source_model: _Optional[str] = ..., target_model: _Optional[str] = ..., all_versions: _Optional[bool] = ...) -> None: ...

class ListMappingsResponse(_message.Message):
    __slots__ = ("maps",)
    MAPS_FIELD_NUMBER: _ClassVar[int]
    maps: _containers.RepeatedCompositeFieldContainer[MapInfo]
    def __init__(self, maps: _Optional[_Iterable[_Union[MapInfo, _Mapping]]] = ...) -> None: ...

class GetMappingRequest(_message.Message):
    __slots__ = ("map_id", "version", "include_file")
    MAP_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FILE_FIELD_NUMBER: _ClassVar[int]
    map_id: str
    version: int
    include_file: bool
    def __init__(self, map_id: _Optional[str] = ..., version: _Optional[int] = ..., include_file: _Optional[bool] = ...) -> None: ...

class GetMappingResponse(_message.Message):
    __slots__ = ("info", "map_file")
    INFO_FIELD_NUMBER: _ClassVar[int]
    MAP_FILE_FIELD_NUMBER: _ClassVar[int]
    info: MapInfo
    map_file: bytes
    def __init__(self, info: _Optional[_Union[MapInfo, _Mapping]] = ..., map_file: _Optional[bytes] = ...) -> None: ...

class PutMappingRequest(_message.Message):
    __slots__ = ("map_file",)
    MAP_FILE_FIELD_NUMBER: _ClassVar[int]
    map_file: bytes
    def __init__(self, map_file: _Optional[bytes] = ...) -> None: ...

class PutMappingResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: MapInfo
    def __init__(self, info: _Optional[_Union[MapInfo, _Mapping]] = ...) -> None: ...

class DeleteMappingRequest(_message.Message):
    __slots__ = ("map_id",)
    MAP_ID_FIELD_NUMBER: _ClassVar[int]
    map_id: str
    def __init__(self, map_id: _Optional[str] = ...) -> None: ...

class DeleteMappingResponse(_message.Message):
    __slots__ = ("versions_deleted",)
    VERSIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    versions_deleted: int
    def __init__(self, versions_deleted: _Optional[int] = ...) -> None: ...

class RollbackMappingRequest(_message.Message):
    __slots__ = ("map_id", "version")
    MAP_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    map_id: str
    version: int
    def __init__(self, map_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackMappingResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: MapInfo
    def __init__(self, info: _Optional[_Union[MapInfo, _Mapping]] = ...) -> None: ...
