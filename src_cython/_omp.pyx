# cython: language_level=3
"""OpenMP facts of the compiled extensions: whether they were built with it, and their thread count."""

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
    """
    int fc_openmp_enabled()
    int fc_max_threads()
    void fc_set_threads(int n)


def openmp_enabled():
    """True when the extension was compiled with OpenMP (parallel loops), False for a serial build."""
    return bool(fc_openmp_enabled())


def max_threads():
    """Threads an OpenMP parallel loop uses (1 in a serial build)."""
    return fc_max_threads()


def set_num_threads(int n):
    """Set the OpenMP thread count of the compiled kernels."""
    fc_set_threads(n)
