/*
 * Holds an mdev's vfio device open as a VM's QEMU does (a container, the
 * group, the device's fd), then waits for a signal: the mdev's remove waits
 * for it. Usage: vfio-holder GROUP UUID; prints "holding" once it holds.
 */
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char group_path[64];
	int container, group, device;

	if (argc != 3) {
		fprintf(stderr, "usage: vfio-holder GROUP UUID\n");
		return 2;
	}
	snprintf(group_path, sizeof(group_path), "/dev/vfio/%s", argv[1]);
	container = open("/dev/vfio/vfio", O_RDWR);
	group = open(group_path, O_RDWR);
	if (container < 0 || group < 0) {
		perror("open");
		return 1;
	}
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) {
		perror("VFIO_GROUP_SET_CONTAINER");
		return 1;
	}
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) && ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU)) {
		perror("VFIO_SET_IOMMU");
		return 1;
	}
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	if (device < 0) {
		perror("VFIO_GROUP_GET_DEVICE_FD");
		return 1;
	}
	puts("holding");
	fflush(stdout);
	pause();
	return 0;
}
