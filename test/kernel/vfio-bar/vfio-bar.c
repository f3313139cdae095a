// vfio-bar GROUP DEVICE BAR: reads 4 bytes of a PCI device's BAR through
// VFIO, as QEMU's first access does. vfio-pci reserves the BAR then
// (vfio_pci_core_setup_barmap: pci_request_selected_regions), so a busy
// range inside it fails the read with EBUSY and the kernel logs "BAR N:
// can't reserve". Prints "read BAR N: ok" or the failing step and errno.
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

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: vfio-bar /dev/vfio/GROUP 0000:BB:DD.F BAR\n");
    return 2;
  }
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) return fail("open /dev/vfio/vfio");
  int group = open(argv[1], O_RDWR);
  if (group < 0) return fail("open group");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) return fail("VFIO_GROUP_SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0) return fail("VFIO_SET_IOMMU");
  int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
  if (device < 0) return fail("VFIO_GROUP_GET_DEVICE_FD");
  struct vfio_region_info info = {.argsz = sizeof info, .index = (uint32_t)atoi(argv[3])};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) < 0) return fail("VFIO_DEVICE_GET_REGION_INFO");
  uint32_t value;
  if (pread(device, &value, sizeof value, (off_t)info.offset) != sizeof value) {
    printf("read BAR %u: %s\n", info.index, strerror(errno));
    return 1;
  }
  printf("read BAR %u: ok\n", info.index);
  return 0;
}
