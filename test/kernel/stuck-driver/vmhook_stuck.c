// SPDX-License-Identifier: GPL-2.0
/*
 * Test-only driver for QEMU's "edu" PCI device (1234:11e8): its remove()
 * sleeps uninterruptibly for up to remove_delay_ms, as a driver that does not
 * let go of its device would, or until 1 is written to let_go. vmhook's
 * kernel bench uses it to test unbinds that do not return
 * (test/kernel/stuck-driver.test.ts).
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/wait.h>

static unsigned int remove_delay_ms;
module_param(remove_delay_ms, uint, 0644);
MODULE_PARM_DESC(remove_delay_ms, "how long remove() blocks at most, in milliseconds");

static DECLARE_WAIT_QUEUE_HEAD(let_go_wait);
static bool let_go;

static int let_go_set(const char *value, const struct kernel_param *kp)
{
	int err = param_set_bool(value, kp);

	if (!err)
		wake_up(&let_go_wait);
	return err;
}

static const struct kernel_param_ops let_go_ops = {
	.set = let_go_set,
	.get = param_get_bool,
};
module_param_cb(let_go, &let_go_ops, &let_go, 0644);
MODULE_PARM_DESC(let_go, "write 1 to end a blocked remove() now");

static int stuck_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	return pci_enable_device(pdev);
}

static void stuck_remove(struct pci_dev *pdev)
{
	/* wait_event_timeout() sleeps in TASK_UNINTERRUPTIBLE: the writer shows as D state. */
	if (remove_delay_ms)
		wait_event_timeout(let_go_wait, READ_ONCE(let_go), msecs_to_jiffies(remove_delay_ms));
	WRITE_ONCE(let_go, false);
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
