// A VFIO user as QEMU is one: a container, the group, the device's fd.
//
//   vfio-user hold /dev/vfio/GROUP DEVICE
//     opens the device, prints "holding" and waits for a signal: a driver's
//     remove() (an mdev's) waits until that fd is closed.
//   vfio-user read-bar /dev/vfio/GROUP DEVICE BAR
//     reads 4 bytes of a PCI device's BAR, as QEMU's first access does.
//     vfio-pci reserves the BAR then (vfio_pci_core_setup_barmap:
//     pci_request_selected_regions), so a busy range inside it fails the read
//     with EBUSY and the kernel logs "BAR N: can't reserve". Prints
//     "read BAR N: ok" or the failing step and errno.
//
// DEVICE is a PCI address or an mdev's UUID.
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int fail(const char *step) {
  printf("%s: %s\n", step, strerror(errno));
  return 1;
}

/* The device's fd, or -1 once the failing step is printed. */
static int open_device(const char *group_path, const char *device) {
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) return fail("open /dev/vfio/vfio"), -1;
  int group = open(group_path, O_RDWR);
  if (group < 0) return fail("open group"), -1;
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) return fail("VFIO_GROUP_SET_CONTAINER"), -1;
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0 && ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0)
    return fail("VFIO_SET_IOMMU"), -1;
  int fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, device);
  if (fd < 0) return fail("VFIO_GROUP_GET_DEVICE_FD"), -1;
  return fd;
}

static int read_bar(int device, const char *bar) {
  struct vfio_region_info info = {.argsz = sizeof info, .index = (uint32_t)atoi(bar)};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) < 0) return fail("VFIO_DEVICE_GET_REGION_INFO");
  uint32_t value;
  if (pread(device, &value, sizeof value, (off_t)info.offset) != sizeof value) {
    printf("read BAR %u: %s\n", info.index, strerror(errno));
    return 1;
  }
  printf("read BAR %u: ok\n", info.index);
  return 0;
}

int main(int argc, char **argv) {
  int hold = argc == 4 && strcmp(argv[1], "hold") == 0;
  int bar = argc == 5 && strcmp(argv[1], "read-bar") == 0;
  if (!hold && !bar) {
    fprintf(stderr, "usage: vfio-user hold /dev/vfio/GROUP DEVICE | vfio-user read-bar /dev/vfio/GROUP DEVICE BAR\n");
    return 2;
  }
  int device = open_device(argv[2], argv[3]);
  if (device < 0) return 1;
  if (bar) return read_bar(device, argv[4]);
  puts("holding");
  fflush(stdout);
  pause();
  return 0;
}
