"""Builds the Cython kernels in ``src_cython/`` with OpenMP where the compiler supports it.

Metadata lives in setup.cfg. A compiler without OpenMP (e.g. Apple clang) still gets a working,
serial build: a warning is printed here and ``fastconv.show_config()`` reports it at run time.
"""
import glob
import os
import sys
import tempfile
import warnings

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_accepts(compiler, flag, program="int main(void){return 0;}\n"):
    """Compile and link ``program`` with ``flag``; True when it works."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(program)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        except Exception:
            return False
    return True


#: Portable builds also compile the register-blocked kernel for these instruction sets (the Cython backend
#: picks the widest the CPU has at import); native builds compile it once, for the CPU at hand.
ISA_BUILDS = {"_blocked_avx2": ["-mavx2", "-mfma"],
              "_blocked_avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"]}


class BuildExt(build_ext):
    def build_extensions(self):
        omp_probe = "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n"
        openmp = (os.environ.get("FASTCONV_NO_OPENMP") != "1"
                  and _compiler_accepts(self.compiler, "-fopenmp", omp_probe))
        if not openmp:
            warnings.warn("fastconv: the C compiler has no OpenMP; Cython kernels will run on one thread")
        # The kernels are built where they run: let the compiler use this CPU's vector instructions
        # (AVX2/AVX-512). FASTCONV_PORTABLE=1 builds for the compiler's baseline instead (wheels).
        native = (os.environ.get("FASTCONV_PORTABLE") != "1"
                  and _compiler_accepts(self.compiler, "-march=native"))
        kept = []
        for ext in self.extensions:
            flags = ISA_BUILDS.get(ext.name.rsplit(".", 1)[-1])
            if flags is not None:
                if native or not all(_compiler_accepts(self.compiler, f) for f in flags):
                    continue
                ext.extra_compile_args += flags
            kept.append(ext)
        self.extensions = kept
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args += ["-fopenmp"]
                ext.extra_link_args += ["-fopenmp"]
            if native:
                ext.extra_compile_args += ["-march=native"]
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    exts = [
        Extension(
            f"fastconv._cy.{os.path.splitext(os.path.basename(path))[0]}",
            [path],
            include_dirs=[numpy.get_include(), "src_cython"],
            depends=sorted(glob.glob("src_cython/*.h") + glob.glob("src_cython/*.pxi")),
            extra_compile_args=["-O3"] if sys.platform != "win32" else ["/O2"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sorted(glob.glob("src_cython/*.pyx"))
        if os.environ.get("FASTCONV_PORTABLE") == "1" or os.path.splitext(os.path.basename(path))[0] not in ISA_BUILDS
    ]
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False})


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
