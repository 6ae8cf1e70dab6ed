"""espeak-ng synthesis server (standard library only; runs as a script, not imported).

Speaks to its parent over stdin/stdout with length-prefixed pickles. It initialises libespeak-ng
once and then forks a child for every request, so each utterance is synthesized from the same
pristine state: espeak-ng otherwise carries state (echo buffer, pitch phase) from one utterance
into the next and the same text would render differently depending on what came before.
Forking this small process costs about a millisecond; forking a worker that holds numpy and
scipy costs twenty.

The library is driven through its documented C API: ``espeak_Initialize`` in synchronous mode
with phoneme events, ``espeak_SetSynthCallback``; every ``espeakEVENT_PHONEME`` event carries the
phone mnemonic and ``sample``, the index of the phone's first sample in the utterance's audio.
"""
import ctypes
import ctypes.util
import os
import pickle
import struct
import sys

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
LIBRARY_NAMES = ("libespeak-ng.so.1", "espeak-ng", "libespeak-ng.dylib")


class EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", EventId)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                            ctypes.POINTER(Event))


def find_library():
    """The loaded libespeak-ng, or None."""
    for name in LIBRARY_NAMES:
        path = ctypes.util.find_library(name) if "." not in name else name
        if not path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


class Engine:
    """An initialised libespeak-ng (process-global state: one per process)."""

    def __init__(self):
        lib = find_library()
        if lib is None:
            raise RuntimeError("libespeak-ng not found")
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        self.lib = lib
        self.sample_rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        data_path = ctypes.c_char_p()
        self.version = lib.espeak_Info(ctypes.byref(data_path)).decode()
        self.data_path = (data_path.value or b"").decode()
        self.chunks = []
        self.phones = []
        self.callback = CALLBACK(self.on_synth)  # keep a reference: the library holds a pointer
        lib.espeak_SetSynthCallback(self.callback)

    def on_synth(self, wav, num_samples, events):
        if wav and num_samples > 0:
            self.chunks.append(ctypes.string_at(wav, num_samples * 2))
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_PHONEME:
                self.phones.append((event.id.string.decode("utf-8", "replace"), event.sample))
            index += 1
        return 0

    def set_voice(self, voice):
        """``en-us``, ``en`` (British), ``en-us+f1`` (dialect+variant), ..."""
        variant = voice.partition("+")[2]
        if variant and not os.path.isfile(os.path.join(self.data_path, "voices", "!v", variant)):
            raise ValueError(f"espeak-ng voice variant {variant!r} not found in {self.data_path}")
        status = self.lib.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (error {status}); see "
                             "`espeak-ng --voices=en` and `espeak-ng --voices=variant`")

    def speak(self, text, voice, words_per_minute, pitch, pitch_range):
        """(int16 little-endian audio bytes, [(phone, start sample)]) at ``sample_rate``."""
        self.set_voice(voice)
        for parameter, value in ((PARAM_RATE, words_per_minute), (PARAM_PITCH, pitch),
                                 (PARAM_RANGE, pitch_range), (PARAM_VOLUME, 100)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self.chunks, self.phones = [], []
        encoded = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, POS_CHARACTER, 0, CHARS_UTF8,
                                       None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        return b"".join(self.chunks), sorted(self.phones, key=lambda item: item[1])


def read_message(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack("<I", header)
    return pickle.loads(stream.read(size))


def write_message(stream, message):
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<I", len(payload)) + payload)
    stream.flush()


def handle(engine, request):
    kind = request[0]
    if kind == "speak":
        return engine.speak(*request[1:])
    if kind == "voice":
        engine.set_voice(request[1])
        return None
    raise ValueError(f"unknown request {kind!r}")


def answer_in_child(engine, request):
    """Run one request in a forked child; return its reply (the parent's state is untouched)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                reply = ("ok", handle(engine, request))
            except Exception as error:
                reply = ("error", f"{type(error).__name__}: {error}")
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return ("error", f"synthesis process died (wait status {status})")
    return pickle.loads(data)


def serve():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        engine = Engine()
    except Exception as error:
        write_message(stdout, ("error", f"{type(error).__name__}: {error}"))
        return
    write_message(stdout, ("ok", {"version": engine.version, "data_path": engine.data_path,
                                  "sample_rate": engine.sample_rate}))
    while True:
        request = read_message(stdin)
        if request is None:
            return
        write_message(stdout, answer_in_child(engine, request))


if __name__ == "__main__":
    serve()
