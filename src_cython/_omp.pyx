# cython: language_level=3
"""Build facts of the compiled extensions: OpenMP (whether, and how many threads) and the widest
vector instructions the compiler was allowed to use."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fc_openmp_enabled(void) { return 1; }
    static int fc_max_threads(void) { return omp_get_max_threads(); }
    static void fc_set_threads(int n) { omp_set_num_threads(n); }
    #else
    static int fc_openmp_enabled(void) { return 0; }
    static int fc_max_threads(void) { return 1; }
    static void fc_set_threads(int n) { (void)n; }
    #endif
    #if defined(__AVX512F__)
    static const char *fc_simd(void) { return "AVX-512"; }
    #elif defined(__AVX2__) && defined(__FMA__)
    static const char *fc_simd(void) { return "AVX2+FMA"; }
    #elif defined(__AVX__)
    static const char *fc_simd(void) { return "AVX"; }
    #elif defined(__SSE2__) || defined(_M_X64)
    static const char *fc_simd(void) { return "SSE2"; }
    #else
    static const char *fc_simd(void) { return "compiler default"; }
    #endif
    """
    int fc_openmp_enabled()
    int fc_max_threads()
    void fc_set_threads(int n)
    const char* fc_simd()


def openmp_enabled():
    """True when the extension was compiled with OpenMP (parallel loops), False for a serial build."""
    return bool(fc_openmp_enabled())


def max_threads():
    """Threads an OpenMP parallel loop uses (1 in a serial build)."""
    return fc_max_threads()


def set_num_threads(int n):
    """Set the OpenMP thread count of the compiled kernels."""
    fc_set_threads(n)


def simd():
    """The widest x86 vector extension the kernels were compiled for ("AVX-512", "AVX2+FMA", "AVX",
    "SSE2"), or "compiler default" on other CPUs."""
    return fc_simd().decode()
