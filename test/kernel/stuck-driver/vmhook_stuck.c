// SPDX-License-Identifier: GPL-2.0
/*
 * Test-only driver for QEMU's "edu" PCI device (1234:11e8): its remove()
 * sleeps uninterruptibly for remove_delay_ms, as a driver that does not let
 * go of its device would. vmhook's kernel bench uses it to test unbinds that
 * do not return (test/kernel/stuck-driver.test.ts).
 */
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/pci.h>

static unsigned int remove_delay_ms;
module_param(remove_delay_ms, uint, 0644);
MODULE_PARM_DESC(remove_delay_ms, "how long remove() blocks, in milliseconds");

static int stuck_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	return pci_enable_device(pdev);
}

static void stuck_remove(struct pci_dev *pdev)
{
	/* msleep() sleeps in TASK_UNINTERRUPTIBLE: the writer shows as D state. */
	if (remove_delay_ms)
		msleep(remove_delay_ms);
	pci_disable_device(pdev);
}

static const struct pci_device_id stuck_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, stuck_ids);

static struct pci_driver stuck_driver = {
	.name = "vmhook_stuck",
	.id_table = stuck_ids,
	.probe = stuck_probe,
	.remove = stuck_remove,
};
module_pci_driver(stuck_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmhook test driver whose remove() blocks");
