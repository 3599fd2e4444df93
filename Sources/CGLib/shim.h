/* GLib, plus the two POSIX headers the plugin needs that Glibc's module lacks. */
#include <glib.h>
#include <glib-unix.h>
#include <sys/eventfd.h>
#include <fcntl.h>
